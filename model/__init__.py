"""SparseEHR model package: config, Hugging Face model classes, presets and accounting.

`register_auto_classes()` (called on `import sparseehr`) makes `AutoConfig`, `AutoModel` and
`AutoModelForCausalLM` resolve model_type "sparseehr" without `trust_remote_code`.
"""
from __future__ import annotations

from sparseehr.model.configuration_sparseehr import SparseEHRConfig

__all__ = ["SparseEHRConfig", "SparseEHRModel", "SparseEHRForCausalLM", "register_auto_classes"]


def register_auto_classes() -> None:
    """Register SparseEHR with transformers' Auto classes (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from sparseehr.model.modeling_sparseehr import SparseEHRForCausalLM, SparseEHRModel

    AutoConfig.register(SparseEHRConfig.model_type, SparseEHRConfig, exist_ok=True)
    AutoModel.register(SparseEHRConfig, SparseEHRModel, exist_ok=True)
    AutoModelForCausalLM.register(SparseEHRConfig, SparseEHRForCausalLM, exist_ok=True)


def __getattr__(name: str):
    # Model classes import DeepSpeed (slow); load them only when asked for.
    if name in ("SparseEHRModel", "SparseEHRForCausalLM"):
        from sparseehr.model import modeling_sparseehr

        return getattr(modeling_sparseehr, name)
    raise AttributeError(f"module 'sparseehr.model' has no attribute {name!r}")
