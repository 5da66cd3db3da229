"""SparseEHR model package (owned by the model work; this placeholder is replaced there)."""


def register_auto_classes() -> None:
    """Register the model with transformers' Auto classes (filled in by the model implementation)."""
