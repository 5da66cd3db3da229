"""Side-by-side realism figures of two MIMIC-IV `hosp` folders (a synthetic one against the real demo)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.csv as pacsv

TOLERANCE = 1.5   # each synthetic figure should be within this factor of the real one


def _read(hosp: Path, name: str, columns: list[str]):
    path = Path(hosp) / f"{name}.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected a MIMIC-IV hosp folder)")
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=columns))


def hosp_figures(hosp: Path) -> dict[str, float]:
    """Named figures of one hosp folder; diagnosis categories are ICD-10 3-character categories."""
    adm = _read(hosp, "admissions", ["subject_id", "hadm_id", "admittime", "dischtime"])
    dx = _read(hosp, "diagnoses_icd", ["hadm_id", "icd_code", "icd_version"])
    px = _read(hosp, "procedures_icd", ["hadm_id", "icd_version"])
    hadm = adm["hadm_id"].to_numpy()
    subject = adm["subject_id"].to_numpy()
    admit = adm["admittime"].cast("int64").to_numpy()
    disch = adm["dischtime"].cast("int64").to_numpy()
    unit = 1e6 if str(adm.schema.field("admittime").type).endswith("[us]") else 1.0   # seconds per unit
    day = 86400 * unit

    def per_admission(table) -> np.ndarray:
        ids, counts = np.unique(table["hadm_id"].to_numpy(), return_counts=True)
        out = np.zeros(hadm.size)
        pos = np.searchsorted(np.sort(hadm), ids)
        out[np.argsort(hadm)[pos]] = counts
        return out

    _, adm_per_patient = np.unique(subject, return_counts=True)
    dx_n, px_n = per_admission(dx), per_admission(px)
    order = np.lexsort((admit, subject))
    same = subject[order][1:] == subject[order][:-1]
    gaps = (np.diff(admit[order]) / day)[same]
    versions = dx["icd_version"].to_numpy()
    codes10 = pc.utf8_slice_codeunits(dx.filter(pc.equal(dx["icd_version"], 10))["icd_code"], 0, 3)
    cats, cat_counts = np.unique(codes10.to_numpy(zero_copy_only=False).astype(str), return_counts=True)
    top = np.argsort(-cat_counts, kind="stable")
    figures = {
        "patients": float(adm_per_patient.size),
        "admissions per patient, mean": adm_per_patient.mean(),
        "admissions per patient, p50": np.percentile(adm_per_patient, 50),
        "admissions per patient, p90": np.percentile(adm_per_patient, 90),
        "diagnoses per admission, mean": dx_n.mean(),
        "diagnoses per admission, p10": np.percentile(dx_n, 10),
        "diagnoses per admission, p50": np.percentile(dx_n, 50),
        "diagnoses per admission, p90": np.percentile(dx_n, 90),
        "procedures per admission, mean": px_n.mean(),
        "procedures per admission, p75": np.percentile(px_n, 75),
        "procedures per admission, p90": np.percentile(px_n, 90),
        "admissions with a procedure, share": (px_n > 0).mean(),
        "ICD-9 share of diagnoses": float((versions == 9).mean()),
        "ICD-9 share of procedures": float((px["icd_version"].to_numpy() == 9).mean()) if px.num_rows else 0.0,
        "gap between admissions (days), p25": np.percentile(gaps, 25) if gaps.size else float("nan"),
        "gap between admissions (days), p50": np.percentile(gaps, 50) if gaps.size else float("nan"),
        "gap between admissions (days), mean": gaps.mean() if gaps.size else float("nan"),
        "length of stay (days), mean": ((disch - admit) / day).mean(),
        "top-20 ICD-10 categories, share of ICD-10 codes": cat_counts[top[:20]].sum() / max(cat_counts.sum(), 1),
        **recurrence_figures(subject, hadm, admit, dx),
    }
    figures = {k: float(v) for k, v in figures.items()}
    figures["_top_categories"] = [str(c) for c in cats[top[:50]]]          # type: ignore[assignment]
    figures["_category_counts"] = dict(zip(cats.tolist(), cat_counts.tolist()))  # type: ignore[assignment]
    return figures


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `values` (largest first), ties given their mean rank."""
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(1, values.size + 1)
    for v in np.unique(values):
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def category_agreement(syn_counts: dict[str, int], ref_counts: dict[str, int], top: int = 50) -> dict[str, float]:
    """Overlap of the top-20 / top-50 ICD-10 categories and the Spearman rank correlation of the category counts
    over the reference's top `top` (a category the synthetic data never codes counts 0 there)."""
    def top_k(counts: dict[str, int], k: int) -> list[str]:
        return sorted(counts, key=lambda c: (-counts[c], c))[:k]

    ref_top = top_k(ref_counts, top)
    a = _average_ranks(np.array([ref_counts[c] for c in ref_top], dtype=float))
    b = _average_ranks(np.array([syn_counts.get(c, 0) for c in ref_top], dtype=float))
    rho = float(np.corrcoef(a, b)[0, 1]) if len(ref_top) > 1 and a.std() and b.std() else float("nan")
    return {"top-20 categories in common": float(len(set(top_k(syn_counts, 20)) & set(top_k(ref_counts, 20)))),
            "top-50 categories in common": float(len(set(top_k(syn_counts, 50)) & set(ref_top))),
            f"Spearman rank correlation over the reference's top-{top} categories": rho}


def recurrence_figures(subject: np.ndarray, hadm: np.ndarray, admit: np.ndarray, dx) -> dict[str, float]:
    """How much of an admission's coding repeats the patient's earlier admissions: what a history baseline feeds on
    and a model has to learn to copy. Over consecutive admission pairs coded in the same ICD version, on 3-character
    categories (the eval's granularity); "earlier" is every earlier admission of the patient (codes compared
    within one ICD version, so a pair across the ICD-9/10 switch is left out)."""
    cats = pc.utf8_slice_codeunits(dx["icd_code"], 0, 3).to_numpy(zero_copy_only=False).astype(str)
    codes_of: dict[int, set[tuple[int, str]]] = {}
    for h, v, c in zip(dx["hadm_id"].to_numpy().tolist(), dx["icd_version"].to_numpy().tolist(), cats.tolist()):
        codes_of.setdefault(h, set()).add((v, c))
    next_in_previous, next_in_earlier, previous_again = [], [], []
    earlier: set[tuple[int, str]] = set()
    order = np.lexsort((admit, subject))
    for prev, nxt in zip(order[:-1].tolist(), order[1:].tolist()):
        if subject[prev] != subject[nxt]:
            earlier = set()
            continue
        a, b = codes_of.get(int(hadm[prev]), set()), codes_of.get(int(hadm[nxt]), set())
        earlier |= a
        if not a or not b or {v for v, _ in a} != {v for v, _ in b}:
            continue
        next_in_previous.append(len(b & a) / len(b))
        next_in_earlier.append(len(b & earlier) / len(b))
        previous_again.append(len(a & b) / len(a))

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    return {"next admission's dx categories seen at the previous one, share": mean(next_in_previous),
            "next admission's dx categories seen at any earlier one, share": mean(next_in_earlier),
            "previous admission's dx categories coded again, share": mean(previous_again)}


def compare_table(synthetic: Path, real: Path) -> tuple[str, bool]:
    """Markdown table (figure, synthetic, real, ratio, within tolerance) and whether every figure is within it."""
    syn, ref = hosp_figures(synthetic), hosp_figures(real)
    lines = ["| figure | synthetic | real | ratio | within x1.5 |", "|---|---:|---:|---:|:---:|"]
    all_ok = True
    for name, real_value in ref.items():
        if name.startswith("_"):
            continue
        value = syn[name]
        if name == "patients":
            lines.append(f"| {name} | {value:.0f} | {real_value:.0f} | | |")
            continue
        ratio = value / real_value if real_value else float("nan")
        ok = bool(np.isfinite(ratio) and 1 / TOLERANCE <= ratio <= TOLERANCE)
        all_ok &= ok
        lines.append(f"| {name} | {value:.3g} | {real_value:.3g} | {ratio:.2f} | {'yes' if ok else 'NO'} |")
    agreement = category_agreement(syn["_category_counts"], ref["_category_counts"])
    lines.append(f"| top-20 ICD-10 categories in common | {agreement['top-20 categories in common']:.0f} of 20 | | | |")
    lines.append(f"| top-50 ICD-10 categories in common | {agreement['top-50 categories in common']:.0f} of 50 | | | |")
    rho_name = next(k for k in agreement if k.startswith("Spearman"))
    lines.append(f"| {rho_name} | {agreement[rho_name]:.2f} | | | |")
    lines.append("")
    lines.append(f"synthetic top-20 categories: {' '.join(syn['_top_categories'][:20])}")
    lines.append(f"real top-20 categories:      {' '.join(ref['_top_categories'][:20])}")
    return "\n".join(lines), all_ok
