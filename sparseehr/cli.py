"""The `sparseehr` console command: a thin dispatcher over each package's `main(argv) -> int`.

Sub-commands are imported lazily so that `sparseehr synth` does not pay for importing DeepSpeed.
"""
from __future__ import annotations

import importlib
import sys

# command -> "module:function"; each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("sparseehr.data_pipeline.simulator.cli:main", "generate a synthetic claims or MIMIC-format health system"),
    "prepare": ("sparseehr.data_pipeline.cli:main", "raw MIMIC-IV / MEDS records -> tokenized DATA_DIR"),
    "model-info": ("sparseehr.model.info:main", "parameter and FLOP accounting of a preset"),
    "train": ("sparseehr.launch.train:main", "train (one process; use `deepspeed launch/train.py` for many)"),
    "export": ("sparseehr.launch.export:main", "DeepSpeed checkpoint -> Hugging Face save_pretrained folder"),
    "eval": ("sparseehr.eval.cli:main", "next-visit, screening and routing evaluations"),
    "bench": ("sparseehr.cli:bench_main", "benchmarks: prepare, model, train, peer (a public model on our data)"),
    "demo": ("sparseehr.demo:main", "the main job: synth -> prepare -> train -> export -> zero-shot eval"),
    "ablate": ("sparseehr.ablate:main", "dense-prefix ablation (the paper's Tables 3-4)"),
    "curve": ("sparseehr.curve:main", "learning curve: next-visit recall of each checkpoint beside both baselines"),
    "scaling": ("sparseehr.scaling.cli:main", "scaling laws: IsoFLOP sweep plan, run, fit"),
}

BENCHES: dict[str, str] = {
    "prepare": "sparseehr.data_pipeline.bench:main",
    "model": "sparseehr.model.bench:main",
    "train": "sparseehr.launch.bench:main",
    "peer": "sparseehr.peerbench:main",
}


def _call(target: str, argv: list[str]) -> int:
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(argv) or 0)


def _usage(table: dict, prog: str) -> str:
    lines = [f"usage: {prog} COMMAND [ARGS]", "", "commands:"]
    for name, value in table.items():
        help_text = value[1] if isinstance(value, tuple) else ""
        lines.append(f"  {name:<12} {help_text}")
    return "\n".join(lines)


def bench_main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHES:
        print(f"usage: sparseehr bench {{{','.join(BENCHES)}}} [ARGS]", file=sys.stderr)
        return 2
    return _call(BENCHES[argv[0]], argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(COMMANDS, "sparseehr"))
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"sparseehr: unknown command {command!r}\n\n{_usage(COMMANDS, 'sparseehr')}", file=sys.stderr)
        return 2
    return _call(COMMANDS[command][0], rest)


if __name__ == "__main__":
    raise SystemExit(main())
