"""Transitional: the names ``keraseq.batches`` held, now in ``keraseq.readers``."""

from .readers import BatchSource, pad_rows, read_rows, read_validation
from .readers.pipelines import dataset_batch, is_pipeline

__all__ = [
    "BatchSource",
    "dataset_batch",
    "is_pipeline",
    "pad_rows",
    "read_rows",
    "read_validation",
]
