"""Vectorised draws of the latent clinical model for one chunk of patients (shared by both systems).

Shapes: P patients in the chunk, V visits in the chunk (sorted by patient, then time), C conditions, E episodes.
Everything is numpy over whole chunks; the only Python loops run over table rows or years of age, never patients.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import clinical
from .codes import CodeBook

ONSET_START_AGE = 18          # conditions are simulated from this age on (adult cohort)
NEVER = np.float32(np.inf)

_C = len(clinical.CONDITIONS)
_CONDITION_INDEX = {name: i for i, name in enumerate(clinical.CONDITION_NAMES)}
_LINK_MATRIX = np.zeros((_C, _C), dtype=np.float32)          # [from, to]
for (_src, _dst), _w in clinical.LINKS.items():
    _LINK_MATRIX[_CONDITION_INDEX[_src], _CONDITION_INDEX[_dst]] = _w
_BASE = np.log(np.array([c.p50 for c in clinical.CONDITIONS], dtype=np.float32))
_AGE_SLOPE = np.array([c.age_slope for c in clinical.CONDITIONS], dtype=np.float32)
_MALE = np.array([c.male for c in clinical.CONDITIONS], dtype=np.float32)
_RESOLVED_BY = [(i, _CONDITION_INDEX[c.resolved_by]) for i, c in enumerate(clinical.CONDITIONS) if c.resolved_by]


def simulate_onsets(rng: np.random.Generator, male: np.ndarray, end_age: np.ndarray,
                    hazard_shift: np.ndarray | None = None) -> np.ndarray:
    """Onset age of every condition, [P, C] float32, `NEVER` when no onset before `end_age`.

    Piecewise-constant hazards in one-year steps from ONSET_START_AGE; a year's hazard depends on the conditions
    present at its start. Sampled as an exponential race: each (patient, condition) draws a threshold E ~ Exp(1)
    once and starts when its cumulative hazard crosses E (exact for piecewise-constant hazards, and one random draw
    instead of one per year). `hazard_shift` ([P, C] log-hazard offsets, e.g. a region effect) is optional.
    """
    n = male.shape[0]
    onset = np.full((n, _C), NEVER, dtype=np.float32)
    patient_base = _BASE[None, :] + male[:, None].astype(np.float32) * _MALE[None, :]
    # A per-patient frailty spreads risk (some people collect conditions): log-normal, shared by all conditions.
    patient_base = patient_base + rng.normal(0.0, 0.45, size=(n, 1)).astype(np.float32)
    if hazard_shift is not None:
        patient_base = patient_base + hazard_shift
    threshold = rng.standard_exponential((n, _C), dtype=np.float32)
    cumulative = np.zeros((n, _C), dtype=np.float32)
    absent = np.ones((n, _C), dtype=np.float32)
    last_age = int(np.ceil(end_age.max())) if n else ONSET_START_AGE
    log_hazard = np.empty((n, _C), dtype=np.float32)       # buffers reused every year (in-place arithmetic)
    hazard = np.empty((n, _C), dtype=np.float32)
    new = np.empty((n, _C), dtype=bool)
    # Sum of the link weights of the conditions present, updated at each onset (cheaper than a yearly matmul).
    link_sum = np.zeros((n, _C), dtype=np.float32)
    for age in range(ONSET_START_AGE, last_age):
        np.add(link_sum, patient_base, out=log_hazard)
        log_hazard += _AGE_SLOPE * np.float32((age - 50) / 10.0)
        np.minimum(log_hazard, 2.0, out=log_hazard)
        np.exp(log_hazard, out=hazard)
        hazard *= absent
        cumulative += hazard
        np.greater_equal(cumulative, threshold, out=new)
        new &= absent.astype(bool)
        if new.any():
            rows, cols = np.nonzero(new)
            h = hazard[rows, cols]
            onset[rows, cols] = age + (threshold[rows, cols] - (cumulative[rows, cols] - h)) / h
            absent[rows, cols] = 0.0
            np.add.at(link_sum, rows, _LINK_MATRIX[cols])
    # Onsets after end_age (inside the last partial year, or of patients who ended earlier) have not happened.
    onset[onset > end_age[:, None]] = NEVER
    return onset


def active_conditions(onset: np.ndarray, visit_patient: np.ndarray, visit_age: np.ndarray) -> np.ndarray:
    """[V, C] bool: conditions present at each visit (a resolved condition, e.g. prediabetes, is gone)."""
    onset_v = onset[visit_patient]
    active = onset_v <= visit_age[:, None]
    for cond, resolver in _RESOLVED_BY:
        active[:, cond] &= ~active[:, resolver]
    return active


def draw_episodes(rng: np.random.Generator, system: str, active: np.ndarray, visit_age: np.ndarray,
                  visit_male: np.ndarray, none_weight: np.ndarray | float = 0.0) -> np.ndarray:
    """One acute episode per visit (index into clinical.EPISODES), or -1 for 'no episode' (weight none_weight)."""
    episodes = clinical.EPISODES
    base = np.array([getattr(e, f"weight_{system}") for e in episodes], dtype=np.float64)
    slope = np.array([e.age_slope for e in episodes])
    male_eff = np.array([e.male for e in episodes])
    links = np.zeros((_C, len(episodes)))
    requires = np.zeros((_C, len(episodes)), dtype=bool)
    for j, e in enumerate(episodes):
        for name, w in e.links.items():
            links[_CONDITION_INDEX[name], j] = w
        for name in e.requires:
            requires[_CONDITION_INDEX[name], j] = True
    log_w = slope[None, :] * ((visit_age[:, None] - 50) / 10.0) + male_eff[None, :] * visit_male[:, None]
    # Conditions one at a time (a [V, C] x [C, E] matmul is slower here than C broadcast adds: links are sparse).
    for c in np.flatnonzero(links.any(axis=1)):
        log_w += active[:, c, None] * links[c][None, :]
    weights = base[None, :] * np.exp(log_w)
    # Episodes that require a condition are impossible without it.
    for c in np.flatnonzero(requires.any(axis=1)):
        weights[:, requires[c]] *= active[:, c, None]
    none_w = np.broadcast_to(np.asarray(none_weight, dtype=np.float64), (active.shape[0],))
    cum = np.cumsum(np.concatenate([weights, none_w[:, None]], axis=1), axis=1)
    u = rng.random(active.shape[0]) * cum[:, -1]
    choice = (cum < u[:, None]).sum(axis=1)
    return np.where(choice >= len(episodes), -1, choice).astype(np.int16)


def feature_matrix(active: np.ndarray, episode: np.ndarray, visit_kind: np.ndarray) -> np.ndarray:
    """[F, V] bool (feature-major, so one feature's column is contiguous): conditions, episodes, visit kinds."""
    n_visits = active.shape[0]
    feats = np.zeros((len(clinical.FEATURE_NAMES), n_visits), dtype=bool)
    feats[:_C] = active.T
    has_episode = episode >= 0
    feats[_C + episode[has_episode].astype(np.int64), np.flatnonzero(has_episode)] = True
    n_before_kinds = _C + len(clinical.EPISODES)
    feats[n_before_kinds + visit_kind.astype(np.int64), np.arange(n_visits)] = True
    return feats


@dataclass(frozen=True)
class EmissionTable:
    """Rows `trigger` (feature index) -> output id with probability `prob`, if `requires` all and no `excludes`."""

    trigger: np.ndarray
    output: np.ndarray
    prob: np.ndarray
    requires: tuple[tuple[int, ...], ...]
    excludes: tuple[tuple[int, ...], ...]


def emit(rng: np.random.Generator, feats: np.ndarray, table: EmissionTable,
         scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fire every table row independently at each visit where its trigger holds.

    Returns (visit index, row index) int64 arrays, ordered by row then visit; `scale` ([V]) multiplies the
    probabilities per visit (e.g. how thoroughly a visit codes chronic conditions).
    """
    visits, rows = [], []
    for r in range(table.trigger.shape[0]):
        mask = feats[table.trigger[r]]
        for f in table.requires[r]:
            mask = mask & feats[f]
        for f in table.excludes[r]:
            mask = mask & ~feats[f]
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            continue
        p = table.prob[r] if scale is None else table.prob[r] * scale[idx]
        idx = idx[rng.random(idx.size) < p]
        visits.append(idx)
        rows.append(np.full(idx.size, r, dtype=np.int64))
    if not visits:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(visits).astype(np.int64), np.concatenate(rows)


def dx_table(book: CodeBook, system: str) -> tuple[EmissionTable, np.ndarray]:
    """The diagnosis emission table for `system` and each row's priority (lower = earlier seq_num)."""
    col = 2 if system == "claims" else 3
    rows = [r for r in clinical.DX_ROWS if r[col] > 0]
    table = EmissionTable(
        trigger=np.array([clinical.feature_index(r[0]) for r in rows]),
        output=np.array([book.dx_id(r[1]) for r in rows]),
        prob=np.array([r[col] for r in rows]),
        requires=tuple(tuple(clinical.feature_index(n) for n in r[4]) for r in rows),
        excludes=tuple(tuple(clinical.feature_index(n) for n in r[5]) for r in rows),
    )
    episode_names = set(clinical.EPISODE_NAMES)
    # Episode companions come right after the principal diagnosis; chronic codes follow in table order.
    priority = np.array([(10 if r[0] in episode_names else 100) + i for i, r in enumerate(rows)])
    return table, priority


def px_table(book: CodeBook) -> EmissionTable:
    pairs = list(book.pcs_codes[: book.n_named_px])
    rows = clinical.PX_ROWS
    return EmissionTable(
        trigger=np.array([clinical.feature_index(r[0]) for r in rows]),
        output=np.array([pairs.index(r[1]) for r in rows]),
        prob=np.array([r[3] for r in rows]),
        requires=((),) * len(rows), excludes=((),) * len(rows),
    )


def cpt_table(system: str) -> EmissionTable:
    col = 2 if system == "claims" else 3
    rows = [(i, r) for i, r in enumerate(clinical.CPT_ROWS) if r[col] > 0]
    return EmissionTable(
        trigger=np.array([clinical.feature_index(r[0]) for _, r in rows]),
        output=np.array([i for i, _ in rows]),          # index into clinical.CPT_ROWS
        prob=np.array([r[col] for _, r in rows]),
        requires=((),) * len(rows), excludes=((),) * len(rows),
    )


def draw_zipf(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    return np.searchsorted(cdf, rng.random(n), side="right").clip(max=cdf.size - 1)


def order_and_dedup(visit: np.ndarray, priority: np.ndarray, code: np.ndarray, n_codes: int,
                    *extra: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sort entries by (visit, priority) and keep the first occurrence of each (visit, code)."""
    order = np.lexsort((priority, visit))
    visit, code = visit[order], code[order]
    _, first = np.unique(visit * np.int64(n_codes) + code, return_index=True)
    keep = np.sort(first)
    return (visit[keep], code[keep]) + tuple(e[order][keep] for e in extra)


def personal_tail_means(latent_mean: float, age: np.ndarray) -> np.ndarray:
    """Expected number of a patient's personal recurring minor conditions: a latent property of the patient, the
    same in both systems (older patients carry more); only how often a visit codes them differs by system."""
    return latent_mean * (0.5 + age / 80.0)


def personal_tail(rng: np.random.Generator, book: CodeBook, n_patients: int, mean_codes: np.ndarray,
                  max_codes: int = 8) -> np.ndarray:
    """[P, max_codes] dx ids of each patient's own recurring minor conditions (-1 = empty slot)."""
    counts = np.minimum(rng.poisson(mean_codes), max_codes)
    slots = book.n_named_dx + draw_zipf(rng, book.personal_cdf, n_patients * max_codes).reshape(n_patients, max_codes)
    slots[np.arange(max_codes)[None, :] >= counts[:, None]] = -1
    return slots


def tail_entries(rng: np.random.Generator, book: CodeBook, visit_patient: np.ndarray, personal: np.ndarray,
                 p_recur: float, noise_mean: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Long-tail diagnoses: each personal code recurs with p_recur; plus Poisson(noise_mean) one-off codes.

    Returns (visit, dx id, priority).
    """
    slots = personal[visit_patient]                                   # [V, K]
    fire = (slots >= 0) & (rng.random(slots.shape, dtype=np.float32) < p_recur)
    v1, k1 = np.nonzero(fire)
    c1 = slots[v1, k1]
    n_noise = rng.poisson(noise_mean)
    v2 = np.repeat(np.arange(visit_patient.size), n_noise)
    c2 = book.n_named_dx + draw_zipf(rng, book.tail_cdf, v2.size)
    visit = np.concatenate([v1, v2]).astype(np.int64)
    code = np.concatenate([c1, c2]).astype(np.int64)
    priority = np.concatenate([1000 + k1, np.full(v2.size, 2000)]).astype(np.int64)
    return visit, code, priority
