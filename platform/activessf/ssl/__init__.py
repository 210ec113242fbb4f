"""Self-supervised pretraining methods behind one small interface (pure PyTorch, no Ray).

    method = build_method(cfg.pretrain)          # from the registry, by cfg.method
    out = method([view1, view2])                 # views: (B, 3, H, W) each, as many as method.views
    out.loss.backward()
    method.after_step(progress)                  # e.g. MoCo's momentum schedule; progress in [0, 1]
    state = method.export_encoder()              # a state dict of a timm model: method.encoder_spec(cfg)

Adding a method is one module with ``@register_method("name", "Label")`` and its own ``Settings``
(``pretrain.options``); nothing else changes (docs/pretrain.md, "Adding a method").
"""

from .base import METHODS, MethodSettings, SSLMethod, SSLOutput, build_method, method_class, register_method
from . import convmae, mae, mixmim, mocov3  # noqa: F401  (register the methods)

__all__ = ["METHODS", "MethodSettings", "SSLMethod", "SSLOutput", "build_method", "method_class", "register_method"]
