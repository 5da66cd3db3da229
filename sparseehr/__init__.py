"""SparseEHR: hybrid dense-to-MoE foundation models over structured EHR.

Importing this package registers the `sparseehr` model type with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(HF_DIR)` works without `trust_remote_code`.

It does so without importing transformers itself: `sparseehr --help`, `sparseehr prepare` and every data-only
command must not pay the seconds that torch + transformers + DeepSpeed take to import. If transformers is already
imported, the Auto classes are registered now; otherwise a one-shot import hook registers them the moment
transformers finishes importing, whichever code imports it.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"


def _register() -> None:
    # Importing the model package registers the Auto classes. When that import is what pulled transformers in,
    # this returns the half-initialised package and the registration runs at the end of its own import.
    importlib.import_module("sparseehr.model")


class _RegisterWhenTransformersLoads(importlib.abc.MetaPathFinder):
    """Finds `transformers` through the normal finders, then wraps its loader so registration runs right after the
    module has executed (its lazy Auto classes resolve then). Removes itself on first use."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            _register()

        spec.loader.exec_module = exec_module
        return spec


if "transformers" in sys.modules:
    _register()
elif not any(isinstance(finder, _RegisterWhenTransformersLoads) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTransformersLoads())
