"""Small training sets reach the Ray Train workers in memory instead of through a Ray Data pipeline.

A Ray Data pipeline costs a Train run a split-coordinator actor and a streaming
executor in every worker: about 3.5 s before the first batch on a 2-core
machine (``benchmarks/bench_startup.py``), which a set of a few hundred crops
does not need. A set whose decoded arrays fit in ``run.inline_data_mb`` is
decoded by the caller and travels inside the loop's config (Ray puts it in the
object store once; every worker, on any node, reads it from there) and each
worker takes its share as Ray Data's split would. Larger sets stream from Ray
Data as before. The loops read either through :func:`dataset_shard`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Mapping, Union

import numpy as np

if TYPE_CHECKING:
    import ray.data

Arrays = dict[str, np.ndarray]


def fits_inline(nbytes: int, limit_mb: float) -> bool:
    """True when a set of ``nbytes`` decoded bytes goes to the workers in memory (``limit_mb`` 0 = never)."""
    return limit_mb > 0 and nbytes <= limit_mb * 2**20


def row_count(data: Union["ray.data.Dataset", Arrays]) -> int:
    return len(next(iter(data.values()))) if isinstance(data, dict) else data.count()


def first_rows(data: Union["ray.data.Dataset", Arrays], column: str, n: int) -> np.ndarray:
    """The first ``n`` values of ``column``, stacked."""
    if isinstance(data, dict):
        return data[column][:n]
    return np.stack([r[column] for r in data.take(n)])


def split_inputs(named: Mapping[str, Union["ray.data.Dataset", Arrays]]) -> tuple[dict, dict]:
    """``(datasets for the trainer, in-memory sets for the loop config's "inline" key)``."""
    inline = {k: v for k, v in named.items() if isinstance(v, dict)}
    return {k: v for k, v in named.items() if k not in inline}, inline


class InlineShard:
    """One worker's share of an in-memory set, with the part of Ray Data's ``DataIterator`` the loops use.

    ``equal``: every worker gets ``n // world`` rows (the training split, so that DDP workers step
    together); otherwise rows ``rank::world``, so that every row is seen once (held-out predictions).
    """

    def __init__(self, columns: Arrays, rank: int, world: int, equal: bool):
        n = len(next(iter(columns.values())))
        idx = np.arange(rank, n, world)
        self.columns = {k: v[idx[: n // world] if equal else idx] for k, v in columns.items()}

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def iter_torch_batches(self, batch_size: int, drop_last: bool = False) -> Iterator[dict]:
        import torch

        stop = len(self) - len(self) % batch_size if drop_last else len(self)
        for i in range(0, stop, batch_size):
            yield {k: torch.from_numpy(np.ascontiguousarray(v[i : i + batch_size])) for k, v in self.columns.items()}


def dataset_shard(inline: Mapping[str, Arrays], name: str):
    """This worker's shard of ``name``: in memory when the caller passed it ``inline``, else Ray Data's."""
    import ray.train

    if name not in inline:
        return ray.train.get_dataset_shard(name)
    ctx = ray.train.get_context()
    return InlineShard(inline[name], ctx.get_world_rank(), ctx.get_world_size(), equal=name == "train")
