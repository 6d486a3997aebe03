"""Collection: which decoded samples are kept (the campaign engine) and how they are batched."""

from tcu.collect.batch import BatchBuilder

__all__ = ["BatchBuilder"]
