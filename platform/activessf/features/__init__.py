"""Feature extraction: timm backbones, weight loading, preprocessing (pure torch)."""

from .backbone import Backbone, load_backbone

__all__ = ["Backbone", "load_backbone"]
