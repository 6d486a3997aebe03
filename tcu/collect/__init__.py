"""Collection: which decoded samples are kept (campaigns) and how they are batched."""

from tcu.collect.batch import BatchBuilder
from tcu.collect.periodic import PeriodicSampler

__all__ = ["BatchBuilder", "PeriodicSampler"]
