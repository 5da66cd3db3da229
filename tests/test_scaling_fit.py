"""`sparseehr scaling fit` against runs generated from a known scaling law (no torch needed by the fitter)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sparseehr.scaling import fit as fitmod
from sparseehr.scaling.parametric import fit_parametric

# A Chinchilla law whose compute-optimal exponents are a = beta/(alpha+beta) = 0.58, b = alpha/(alpha+beta) = 0.42.
E, A, B, ALPHA, BETA = 1.8, 300.0, 900.0, 0.252, 0.348
BUDGETS = np.geomspace(1e15, 1e19, 5)


def law(n, d):
    return E + A / n ** ALPHA + B / d ** BETA


def n_opt_true(c):
    """Minimiser of law(N, C / 6N) in N, by calculus: N = G (C/6)^(beta/(alpha+beta))."""
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    return g * (c / 6) ** (BETA / (ALPHA + BETA))


def synthetic_rows(noise=0.002, seed=0, family="dense", sizes=9, offset=1.4):
    """Runs at sizes spread over +-0.6 decades around (offset x) the true optimum, C = 6 N D, noisy losses."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in BUDGETS:
        for n in n_opt_true(c) * offset * np.logspace(-0.6, 0.6, sizes):
            d = c / (6 * n)
            loss = law(n, d) * (1 + noise * rng.standard_normal())
            rows.append({"family": family, "budget_flops": float(c), "flops": float(c), "params_active": int(n),
                         "params_total": int(2 * n), "tokens": int(d), "val_loss": float(loss)})
    return rows


def test_isoflop_recovers_known_exponents_with_noise():
    result = fitmod.fit_runs(synthetic_rows(), n_boot=60, seed=1)
    iso = result["families"]["dense"]["isoflop"]
    assert all(b["accepted"] and b["curvature"] > 0 for b in iso["budgets"])
    assert iso["a"] == pytest.approx(0.58, abs=0.03)
    assert iso["b"] == pytest.approx(0.42, abs=0.03)
    assert iso["a_ci"][0] < iso["a"] < iso["a_ci"][1] and iso["b_ci"][0] < iso["b"] < iso["b_ci"][1]
    # D_opt comes from the rows' own flops/tokens (= 6 N here), so C = 6 N_opt D_opt at every budget.
    for b in iso["budgets"]:
        assert b["budget_flops"] == pytest.approx(6 * b["n_opt"] * b["d_opt"], rel=1e-3)


def test_parametric_fit_recovers_the_law():
    rows = synthetic_rows(noise=0.001, seed=2)
    n, d, loss = (np.array([r[k] for r in rows], dtype=float) for k in ("params_active", "tokens", "val_loss"))
    fitted = fit_parametric(n, d, loss)
    assert fitted["E"] == pytest.approx(E, rel=0.03)
    assert fitted["alpha"] == pytest.approx(ALPHA, abs=0.03)
    assert fitted["beta"] == pytest.approx(BETA, abs=0.03)
    assert fitted["a"] == pytest.approx(0.58, abs=0.03) and fitted["b"] == pytest.approx(0.42, abs=0.03)


def test_non_positive_curvature_and_outside_minimum_are_rejected():
    rows = synthetic_rows(noise=0.0)
    c_bad, c_edge = 3e17, 7e17
    for i, n in enumerate(np.logspace(6, 8, 5)):  # loss falling ever faster with N: concave, no minimum
        rows.append({"family": "dense", "budget_flops": c_bad, "flops": c_bad, "params_active": int(n),
                     "params_total": int(n), "tokens": int(c_bad / 6 / n), "val_loss": 3.0 - 0.01 * i ** 2})
    for n in np.logspace(2, 4, 5):  # a convex curve whose minimum lies beyond the largest size
        rows.append({"family": "dense", "budget_flops": c_edge, "flops": c_edge, "params_active": int(n),
                     "params_total": int(n), "tokens": int(c_edge / 6 / n),
                     "val_loss": 3.0 + 0.1 * (np.log10(n) - 5.0) ** 2})
    budgets = {b["budget_flops"]: b for b in fitmod.fit_runs(rows, n_boot=0)["families"]["dense"]["isoflop"]["budgets"]}
    assert budgets[c_bad]["curvature"] < 0 and not budgets[c_bad]["accepted"]
    assert "not positive" in budgets[c_bad]["reason"] and budgets[c_bad]["n_opt"] is None
    assert budgets[c_edge]["curvature"] > 0 and not budgets[c_edge]["accepted"]
    assert "outside the sampled sizes" in budgets[c_edge]["reason"]
    assert sum(b["accepted"] for b in budgets.values()) == len(BUDGETS)


def test_cli_on_a_hand_written_table_writes_the_contract(tmp_path):
    rows = synthetic_rows(family="dense") + synthetic_rows(family="hybrid", offset=1.0, seed=3)
    for row in rows:  # the hybrid family reaches each loss with 20% less compute: same law at C / 0.8
        if row["family"] == "hybrid":
            row["val_loss"] = float(law(row["params_active"], row["tokens"] / 0.8))
        row["recall_at_10"] = round(0.95 - 0.05 * row["val_loss"], 4)
    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "fit"
    assert fitmod.main([str(runs), "--out", str(out), "--bootstrap", "30"]) == 0
    fit = json.loads((out / "fit.json").read_text())
    for family in ("dense", "hybrid"):
        iso, par = fit["families"][family]["isoflop"], fit["families"][family]["parametric"]
        assert {"a", "a_ci", "b", "b_ci", "budgets"} <= set(iso) and len(iso["a_ci"]) == 2
        assert {"budget_flops", "curvature", "n_opt", "d_opt", "accepted"} <= set(iso["budgets"][0])
        assert {"E", "A", "B", "alpha", "beta", "a", "b"} <= set(par)
        assert fit["families"][family]["utility"]["recall_at_10"]["vs_val_loss"]["slope"] == pytest.approx(-0.05,
                                                                                                         abs=1e-3)
    assert fit["comparison"]["fewest_flops"] == "hybrid"
    assert fit["comparison"]["ratio_to_fewest"]["dense"] == pytest.approx(1.25, rel=0.1)
    report = (out / "report.md").read_text()
    assert "hybrid" in report and "x1.2" in report
    assert {p.name for p in out.glob("*.png")} == {"scaling_dense.png", "scaling_hybrid.png", "scaling_overlay.png"}


@pytest.mark.parametrize("line, message", [
    ('{"family": "dense", "budget_flops": 1e12}', "line 2: field 'flops' is missing"),
    ('{"family": "dense", "budget_flops": 1e12, "flops": 1e12, "params_active": 10.5, "params_total": 20, '
     '"tokens": 5, "val_loss": 3.0}', "line 2: field 'params_active' must be an integer"),
    ('{"family": "dense", "budget_flops": 1e12, "flops": 1e12, "params_active": 10, "params_total": 20, '
     '"tokens": 5, "val_loss": -1}', "line 2: field 'val_loss' must be positive"),
    ("not json", "line 2: not JSON"),
])
def test_bad_rows_are_named(tmp_path, capsys, line, message):
    good = json.dumps(synthetic_rows()[0])
    runs = tmp_path / "runs.jsonl"
    runs.write_text(good + "\n" + line + "\n")
    assert fitmod.main([str(runs), "--out", str(tmp_path / "fit")]) == 1
    err = capsys.readouterr().err
    assert message in err and str(runs) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "fit").exists()


def test_fit_module_does_not_import_deepspeed(tmp_path):
    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows()))
    code = ("import sys; from sparseehr.scaling.cli import main; "
            f"rc = main(['fit', {str(runs)!r}, '--out', {str(tmp_path / 'fit')!r}, '--bootstrap', '5']); "
            "assert rc == 0; assert 'deepspeed' not in sys.modules, 'fit imported deepspeed'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_scaling_dispatcher_and_plan_help_stay_light(capsys):
    from sparseehr.scaling import cli

    assert cli.main(["no-such"]) == 2 and "unknown sub-command" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0 and "plan" in capsys.readouterr().out
    code = ("import sys; from sparseehr.scaling.cli import main\n"
            "try:\n    main(['plan', '--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
            "assert 'deepspeed' not in sys.modules and 'datasets' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--tokens-per-param" in done.stdout
