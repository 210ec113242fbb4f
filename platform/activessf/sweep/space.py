"""Search spaces for ``activessf sweep``: a small YAML format, validated before anything runs.

A space file names what it sweeps and, per config field, one distribution::

    kind: selection                        # selection (scored by a probe) or filter (scored by F1)
    space:
      select.alpha: {uniform: [0.25, 2.0]}
      select.bound_mode: {choice: [minmax, absolute, quantile]}
      prototypes.k: {choice: [5, 11, 15]}

Distributions (Ray Tune's, by name):

    {choice: [a, b, ...]}        one of the values, uniformly
    {grid: [a, b, ...]}          every value (grid search: multiplies the trials)
    {uniform: [low, high]}       float in [low, high]
    {loguniform: [low, high]}    float, log-uniform, low > 0
    {quniform: [low, high, q]}   float in [low, high] rounded to a multiple of q
    {randint: [low, high]}       integer in [low, high) (Ray's convention: high excluded)

A key must be ``section.field`` of the configuration and belong to a section
the sweep kind may change; every value is checked against that field, and a
few hundred seeded draws of whole configurations are validated together, so
that a space that can produce an invalid combination (``select.lb`` above
``select.ub``) is refused before the first trial with the message of the
offending draw. Pure code: converting to Ray Tune objects happens in
``stages/sweep.py``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import Config, ConfigError, apply_overrides, build_config, explain, read_yaml

KINDS = {
    "selection": ("select", "prototypes"),  # what a selection trial may change
    "filter": ("filter",),
}
DISTRIBUTIONS = {"choice": None, "grid": None, "uniform": 2, "loguniform": 2, "quniform": 3, "randint": 2}


@dataclass(frozen=True)
class Distribution:
    name: str  # one of DISTRIBUTIONS
    args: tuple  # values (choice, grid) or bounds

    def sample(self, rng: np.random.Generator) -> Any:
        """One draw, as Ray Tune would make it (for validation)."""
        a = self.args
        if self.name in ("choice", "grid"):
            return a[int(rng.integers(len(a)))]
        if self.name == "uniform":
            return float(rng.uniform(a[0], a[1]))
        if self.name == "loguniform":
            return float(math.exp(rng.uniform(math.log(a[0]), math.log(a[1]))))
        if self.name == "quniform":
            return float(np.round(rng.uniform(a[0], a[1]) / a[2]) * a[2])
        return int(rng.integers(a[0], a[1]))  # randint

    def extremes(self) -> list:
        """The values at the edges of the distribution (every value for choice and grid)."""
        if self.name in ("choice", "grid"):
            return list(self.args)
        if self.name == "randint":
            return [self.args[0], self.args[1] - 1]
        return [self.args[0], self.args[1]]


@dataclass(frozen=True)
class SearchSpace:
    kind: str
    params: dict[str, Distribution]  # "section.field" -> distribution
    source: str = ""

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """``--set`` style overrides for one trial's values."""
        return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                for k, v in values.items()]

    def apply(self, base: dict, values: dict[str, Any]) -> Config:
        """The full configuration of one trial (validated)."""
        return build_config(apply_overrides(base, self.overrides(values)))

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {k: d.sample(rng) for k, d in self.params.items()}


def load_space(path: str | Path, base: dict | None = None, draws: int = 300, seed: int = 0) -> SearchSpace:
    """Read and validate a space file against ``base`` (a config dump; defaults when None)."""
    raw = read_yaml(path)
    unknown = sorted(set(raw) - {"kind", "space"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; a space file has `kind` and `space`")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{path}: `kind` must be one of {', '.join(KINDS)}, got {kind!r}")
    entries = raw.get("space")
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: `space` must map config fields (section.field) to distributions")
    base = base if base is not None else Config().model_dump(mode="json")
    params = {key: _parse_entry(path, kind, key, spec, base) for key, spec in entries.items()}
    space = SearchSpace(kind, params, str(path))
    _check_draws(space, base, draws, seed)
    return space


def _parse_entry(path, kind: str, key: str, spec: Any, base: dict) -> Distribution:
    _check_key(path, kind, key)
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{path}: {key}: give exactly one distribution, e.g. {{uniform: [0.25, 2.0]}}; "
                          f"known: {', '.join(DISTRIBUTIONS)}")
    (name, args), = spec.items()
    if name not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(name), DISTRIBUTIONS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{path}: {key}: unknown distribution {name!r}.{hint} Known: {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{path}: {key}: {name} takes a non-empty list, got {args!r}")
    arity = DISTRIBUTIONS[name]
    if arity is not None:
        if len(args) != arity or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise ConfigError(f"{path}: {key}: {name} takes {arity} numbers, got {args!r}")
        if args[0] >= args[1] or (name == "loguniform" and args[0] <= 0) or (name == "quniform" and args[2] <= 0):
            raise ConfigError(f"{path}: {key}: {name} bounds {args!r} must satisfy low < high"
                              + (" and low > 0" if name == "loguniform" else "")
                              + (" and q > 0" if name == "quniform" else ""))
    dist = Distribution(name, tuple(args))
    for value in dist.extremes():  # each value must be valid for its field on its own
        problem = field_problem(key, value)
        if problem:
            raise ConfigError(f"{path}: {key}: the value {value!r} of {name} {list(args)} is not valid: {problem}")
    return dist


def field_problem(key: str, value: Any) -> str:
    """Why ``value`` is not valid for the field ``key`` on its own (its type and bounds), or ''.

    Constraints between fields (``select.lb <= select.ub``) are checked on whole draws instead.
    """
    from pydantic import ConfigDict, ValidationError, create_model

    section, _, field = key.partition(".")
    info = Config.model_fields[section].annotation.model_fields[field]
    single = create_model(section, __config__=ConfigDict(extra="forbid"), **{field: (info.annotation, info)})
    try:
        single.model_validate({field: value})
    except ValidationError as exc:
        return explain(exc, single).splitlines()[1].strip(" -")
    return ""


def _check_key(path, kind: str, key: str) -> None:
    section, _, field = str(key).partition(".")
    sections = Config.model_fields
    if section not in sections or not field:
        close = difflib.get_close_matches(section, sections, n=1)
        hint = f" Did you mean '{close[0]}.{field}'?" if close and field else ""
        raise ConfigError(f"{path}: {key!r} is not section.field of the configuration.{hint} "
                          f"Sections: {', '.join(sections)}")
    fields = sections[section].annotation.model_fields
    if field not in fields:
        close = difflib.get_close_matches(field, fields, n=1)
        hint = f" Did you mean '{section}.{close[0]}'?" if close else ""
        raise ConfigError(f"{path}: {key!r}: {section} has no field {field!r}.{hint} "
                          f"Fields of {section}: {', '.join(fields)}")
    if section not in KINDS[kind]:
        raise ConfigError(f"{path}: {key!r}: a {kind} sweep may change only {', '.join(KINDS[kind])} settings")


def _check_draws(space: SearchSpace, base: dict, draws: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(draws):
        values = space.sample(rng)
        try:
            space.apply(base, values)
        except ConfigError as exc:
            raise ConfigError(f"{space.source}: the space can produce an invalid configuration, e.g. {values}:\n"
                              f"{exc}\nNarrow the ranges so that every combination is valid.") from None
