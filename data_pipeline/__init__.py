"""Readers, harmonization, typed-token timelines and the `datasets` build behind `sparseehr prepare`."""
