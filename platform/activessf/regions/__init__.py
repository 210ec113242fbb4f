"""Cell region filtering (paper Sec. II-B): pure functions on arrays, no Ray, no MLflow."""

from .filter import FilterResult, Region, filter_image

__all__ = ["FilterResult", "Region", "filter_image"]
