"""SparseEHR: hybrid dense-to-MoE foundation models over structured EHR.

Importing this package registers the `sparseehr` model type with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(HF_DIR)` works without `trust_remote_code`.
"""
from sparseehr.model import register_auto_classes as _register_auto_classes

__version__ = "0.1.0"

_register_auto_classes()
