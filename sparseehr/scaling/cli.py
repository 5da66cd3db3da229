"""`sparseehr scaling {plan,run,fit}`: each sub-command's module is imported only when it is called, so `fit`
(and every `--help`) never imports torch, transformers or DeepSpeed."""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("sparseehr.scaling.plan", "pick shapes and tokens per FLOP budget -> PLAN_DIR/plan.json"),
    "run": ("sparseehr.scaling.run", "train every plan point (resumable) -> PLAN_DIR/runs.jsonl"),
    "fit": ("sparseehr.scaling.fit", "IsoFLOP parabolas, power laws, Chinchilla fit, plots -> FIT_DIR"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        lines = ["usage: sparseehr scaling {plan,run,fit} [ARGS]", ""]
        lines += [f"  {name:<6} {text}" for name, (_, text) in SUBCOMMANDS.items()]
        known = not argv or argv[0] in ("-h", "--help")
        print(("" if known else f"sparseehr scaling: unknown sub-command {argv[0]!r}\n\n") + "\n".join(lines),
              file=sys.stdout if known and argv else sys.stderr)
        return 0 if known and argv else 2
    return int(importlib.import_module(SUBCOMMANDS[argv[0]][0]).main(argv[1:]) or 0)
