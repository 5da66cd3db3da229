"""Evaluation: metrics, cohorts, scorers (model and baselines), reports and the `sparseehr eval` CLI."""
