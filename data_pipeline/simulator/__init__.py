"""Synthetic two-health-system EHR simulator behind `sparseehr synth`."""
