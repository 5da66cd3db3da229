"""The Chinchilla parametric loss L(N, D) = E + A / N^alpha + B / D^beta, fitted as Hoffmann et al. (2022) do.

Parametrised as A = e^a, B = e^b, E = e^e, the model's log-loss is LSE(a - alpha log N, b - beta log D, e); the
objective is the Huber loss (delta = 1e-3) between that and log L, summed over runs, minimised with scipy's
L-BFGS-B from the best starts of their grid (alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
a, b in {0, 5, ..., 25}). The compute-optimal exponents it implies are a = beta / (alpha + beta) for N_opt and
b = alpha / (alpha + beta) for D_opt.
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np

HUBER_DELTA = 1e-3
GRID = {"a": np.arange(0, 30, 5.0), "b": np.arange(0, 30, 5.0), "e": np.arange(-1, 1.5, 0.5),
        "alpha": np.arange(0, 2.5, 0.5), "beta": np.arange(0, 2.5, 0.5)}
ORDER = ("a", "b", "e", "alpha", "beta")
BOUNDS = [(None, None), (None, None), (None, None), (0.0, 10.0), (0.0, 10.0)]
MIN_RUNS = 6  # five parameters
LBFGS_STARTS = 8


def _terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """theta [..., 5], log_n/log_d [runs] -> the three log-terms [..., runs, 3]."""
    a, b, e, alpha, beta = (theta[..., i, None] for i in range(5))  # each [..., 1]
    first, second = a - alpha * log_n, b - beta * log_d
    return np.stack([first, second, np.broadcast_to(e, first.shape)], axis=-1)


def _logsumexp(terms: np.ndarray) -> np.ndarray:
    # numpy rather than scipy.special.logsumexp: this runs ~10^4 times per fit and scipy's checks dominate.
    top = terms.max(axis=-1)
    return top + np.log(np.exp(terms - top[..., None]).sum(axis=-1))


def _huber(residual: np.ndarray) -> np.ndarray:
    """Huber loss with HUBER_DELTA (as scipy.special.huber): quadratic inside delta, linear outside."""
    absolute = np.abs(residual)
    return np.where(absolute <= HUBER_DELTA, 0.5 * residual ** 2, HUBER_DELTA * (absolute - 0.5 * HUBER_DELTA))


def objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray) -> tuple[float, np.ndarray]:
    """Summed Huber loss of the predicted log-loss and its gradient in (a, b, e, alpha, beta)."""
    terms = _terms(theta, log_n, log_d)  # [runs, 3]
    lse = _logsumexp(terms)
    residual = lse - log_loss
    weights = np.exp(terms - lse[:, None])  # softmax: d lse / d term
    # Scaled by 1 / (delta^2 n) so that values are O(1) and L-BFGS-B's tolerances mean the same for any table
    # (the minimiser does not change).
    scale = 1.0 / (HUBER_DELTA ** 2 * len(log_loss))
    psi = np.clip(residual, -HUBER_DELTA, HUBER_DELTA) * scale  # derivative of the Huber loss
    grad = np.array([np.sum(psi * weights[:, 0]), np.sum(psi * weights[:, 1]), np.sum(psi * weights[:, 2]),
                     np.sum(psi * weights[:, 0] * -log_n), np.sum(psi * weights[:, 1] * -log_d)])
    return float(np.sum(_huber(residual)) * scale), grad


def grid_objective(log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every grid start and its objective (vectorised: one pass over the whole grid)."""
    starts = np.array(list(itertools.product(*(GRID[k] for k in ORDER))))
    terms = _terms(starts, log_n, log_d)  # [starts, runs, 3]
    residual = _logsumexp(terms) - log_loss[None, :]
    return starts, _huber(residual).sum(axis=1)


def _minimise(start: np.ndarray, log_n, log_d, log_loss):
    from scipy.optimize import minimize

    return minimize(objective, start, args=(log_n, log_d, log_loss), jac=True, method="L-BFGS-B", bounds=BOUNDS,
                    options={"maxiter": 500, "ftol": 1e-10, "gtol": 1e-8})


def _as_result(theta: np.ndarray, value: float) -> dict[str, Any]:
    a, b, e, alpha, beta = (float(v) for v in theta)
    total = alpha + beta
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": alpha, "beta": beta,
            "a": beta / total if total > 0 else None, "b": alpha / total if total > 0 else None,
            "objective": value, "huber_delta": HUBER_DELTA}


def fit_parametric(n: np.ndarray, d: np.ndarray, loss: np.ndarray, starts: int = LBFGS_STARTS) -> dict | None:
    """Best L-BFGS-B solution from the `starts` best grid points; None with fewer than MIN_RUNS runs."""
    if len(n) < MIN_RUNS:
        return None
    log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)
    grid, values = grid_objective(log_n, log_d, log_loss)
    best = None
    for index in np.argsort(values)[:starts]:
        result = _minimise(grid[index], log_n, log_d, log_loss)
        if best is None or result.fun < best.fun:
            best = result
    fitted = _as_result(best.x, float(best.fun))
    fitted.update(theta=[float(v) for v in best.x], n_runs=len(n), grid_starts=len(grid), lbfgs_starts=starts)
    return fitted


def bootstrap_parametric(n: np.ndarray, d: np.ndarray, loss: np.ndarray, full: dict[str, Any], n_boot: int,
                         rng: np.random.Generator) -> dict[str, Any]:
    """95% percentile intervals of alpha, beta, a, b, resampling runs; each resample starts from the full fit
    and the best grid point of the resample."""
    samples = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(n), len(n))
        log_n, log_d, log_loss = np.log(n[pick]), np.log(d[pick]), np.log(loss[pick])
        grid, values = grid_objective(log_n, log_d, log_loss)
        starts = [np.array(full["theta"])] + [grid[int(np.argmin(values))]]
        best = min((_minimise(s, log_n, log_d, log_loss) for s in starts), key=lambda r: r.fun)
        fitted = _as_result(best.x, float(best.fun))
        if fitted["a"] is not None:
            samples.append((fitted["alpha"], fitted["beta"], fitted["a"], fitted["b"]))
    if len(samples) < 10:
        return {"alpha_ci": None, "beta_ci": None, "a_ci": None, "b_ci": None, "n_bootstrap_used": len(samples)}
    low, high = np.percentile(np.array(samples), [2.5, 97.5], axis=0)
    names = ("alpha_ci", "beta_ci", "a_ci", "b_ci")
    return {**{name: [float(lo), float(hi)] for name, lo, hi in zip(names, low, high)},
            "n_bootstrap_used": len(samples)}


def predict(fitted: dict[str, Any], n: np.ndarray, d: np.ndarray) -> np.ndarray:
    return fitted["E"] + fitted["A"] / np.power(n, fitted["alpha"]) + fitted["B"] / np.power(d, fitted["beta"])
