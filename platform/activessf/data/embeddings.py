"""Embedding tables: what `activessf embed` writes and what selection and sweeps read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def embedding_schema(dim: int) -> pa.Schema:
    """One row per image: its id, its label (labelled cells; null for regions), its embedding, or the
    error that stopped it."""
    return pa.schema([("id", pa.string()), ("label", pa.string()),
                      ("embedding", pa.list_(pa.float32(), dim)), ("error", pa.string())])


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list column as a float32 (N, D) matrix."""
    emb = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return emb.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(emb), emb.type.list_size)


def read_embeddings(out: str | Path) -> tuple[list[str], list, np.ndarray, dict]:
    """(ids, labels, embeddings (N, D) float32, meta) of an embed output, in a stable order (by id)."""
    out = Path(out)
    path = out / "embeddings"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: is {out} the output of `activessf embed`?")
    t = pq.read_table(path).sort_by("id")
    meta = json.loads((out / "embed.json").read_text())
    return t.column("id").to_pylist(), t.column("label").to_pylist(), embedding_matrix(t.column("embedding")), meta
