"""The runs table's columns (docs/scaling.md): one home, read by the fitter, the plots and the report alike."""

REQUIRED = {"family": str, "budget_flops": float, "flops": float, "params_active": int, "params_total": int,
            "tokens": int, "val_loss": float}
UTILITY = ("recall_at_10", "recall_at_20", "screening_auroc")
