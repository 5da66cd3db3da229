"""Start-up respects the user's time: the CLI and every data-only command run without importing torch,
transformers or DeepSpeed (seconds each), while `import sparseehr` still makes the Auto classes resolve
model_type "sparseehr" without `trust_remote_code`."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

HEAVY = ("torch", "transformers", "deepspeed")


def _heavy_modules_after(code: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """Run `code` in a fresh interpreter and return which heavy modules it left in sys.modules."""
    probe = code + f"\nimport json, sys\nprint(json.dumps([m for m in {heavy!r} if m in sys.modules]))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_cli(argv: list[str]) -> str:
    return ("import sys\nfrom sparseehr.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n")


@pytest.mark.parametrize("argv", [["--help"], ["prepare", "--help"], ["synth", "--help"], ["bench", "prepare", "--help"]])
def test_help_imports_no_deep_learning_stack(argv):
    assert _heavy_modules_after(_run_cli(argv)) == []


def test_prepare_on_the_real_demo_imports_no_deep_learning_stack(mimic_demo_hosp, tmp_path):
    out = tmp_path / "data"
    code = _run_cli(["prepare", "--mimic", str(mimic_demo_hosp), "--out", str(out)])
    # nor `datasets` (0.5 s of CPU): prepare writes the saved-DatasetDict layout itself (shards.py)
    assert _heavy_modules_after(code, HEAVY + ("datasets",)) == []
    assert (out / "tokenizer" / "tokenizer.json").is_file()


def test_synth_imports_no_deep_learning_stack(tmp_path):
    code = _run_cli(["synth", "--system", "claims", "--patients", "20", "--seed", "0", "--out", str(tmp_path / "c")])
    assert _heavy_modules_after(code) == []


def test_auto_classes_resolve_after_import_sparseehr_in_either_order(tmp_path):
    """Registration is deferred to the moment transformers loads: check both import orders in fresh processes,
    loading a saved model and comparing its logits with the in-process model's."""
    from sparseehr.model.modeling_sparseehr import SparseEHRForCausalLM
    from sparseehr.model.presets import get_preset

    torch.manual_seed(0)
    model = SparseEHRForCausalLM(get_preset("tiny", vocab_size=50)).eval()
    model.save_pretrained(str(tmp_path / "hf"))
    ids = [[1, 5, 7, 9, 2]]
    with torch.no_grad():
        expected = model(torch.tensor(ids)).logits[0, -1].tolist()
    for first, second in (("import sparseehr", "import transformers"), ("import transformers", "import sparseehr")):
        code = (f"{first}\n{second}\nimport json, torch\nfrom transformers import AutoModelForCausalLM\n"
                f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'hf')!r}).eval()\n"
                f"print(type(m).__name__)\nprint(json.dumps(m(torch.tensor({ids})).logits[0, -1].tolist()))\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        name, logits = done.stdout.strip().splitlines()[-2:]
        assert name == "SparseEHRForCausalLM"
        assert torch.allclose(torch.tensor(json.loads(logits)), torch.tensor(expected), atol=1e-5)
