"""EHR scaling laws on this stack: IsoFLOP sweep plans, resumable sweep runs, power-law and parametric fits.

`sparseehr scaling plan|run|fit` (cli.py); the runs table and fit.json formats are documented in docs/scaling.md.
"""
