"""Fixed 2-D sine-cosine position embeddings (MAE's), shared by every encoder and decoder here."""

from __future__ import annotations

import numpy as np
import torch


def sincos_2d(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2-D sine-cosine position embedding: (1, grid*grid [+1], dim), row-major."""
    assert dim % 4 == 0, "embedding dim must be divisible by 4"
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def one(pos):  # (M,) -> (M, dim/2)
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one(xs), one(ys)], axis=1)  # (grid*grid, dim)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    # torch.tensor, not from_numpy: it follows a ``with torch.device(...)`` context (timm's meta-device builds)
    return torch.tensor(emb, dtype=torch.float32).unsqueeze(0)
