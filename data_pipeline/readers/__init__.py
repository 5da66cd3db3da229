"""Readers: one per source format, each returning :class:`RawRecords` (events table + visits table)."""
from sparseehr.data_pipeline.readers.common import RawRecords

__all__ = ["RawRecords"]
