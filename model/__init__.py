"""SparseEHR model package: config, Hugging Face model classes, presets and accounting.

Importing it registers model_type "sparseehr" with `AutoConfig`, `AutoModel` and `AutoModelForCausalLM`, so they
resolve it without `trust_remote_code`. (The config alone already imports transformers and torch, so registering
the model classes too costs nothing extra; DeepSpeed loads only when an MoE block is built.) `import sparseehr`
arranges for this package to load as soon as transformers does, and not before.
"""
from __future__ import annotations

from sparseehr.model.configuration_sparseehr import SparseEHRConfig
from sparseehr.model.modeling_sparseehr import SparseEHRForCausalLM, SparseEHRModel

__all__ = ["SparseEHRConfig", "SparseEHRModel", "SparseEHRForCausalLM", "register_auto_classes"]


def register_auto_classes() -> None:
    """Register SparseEHR with transformers' Auto classes (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    AutoConfig.register(SparseEHRConfig.model_type, SparseEHRConfig, exist_ok=True)
    AutoModel.register(SparseEHRConfig, SparseEHRModel, exist_ok=True)
    AutoModelForCausalLM.register(SparseEHRConfig, SparseEHRForCausalLM, exist_ok=True)


register_auto_classes()
