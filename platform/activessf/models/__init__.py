"""Encoder architectures of our own, registered with timm (``timm.create_model(name, ...)``).

The SSL methods whose encoders timm does not ship (ConvMAE's ConvViT, MixMIM's
hierarchical encoder) define them here; importing this package registers them,
so the fine-tuning stage rebuilds any exported encoder by its timm name.
"""

from . import convvit, mixvit  # noqa: F401,E402  (register convvit_activessf and mixmim_activessf)
