"""Search-space files: the shipped spaces load; every kind of mistake is an error that names the key."""

import numpy as np
import pytest

from activessf.config import Config, ConfigError
from activessf.sweep.space import load_space


def write(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_shipped_spaces_load_and_draw_valid_configs(repo):
    sel = load_space(repo / "tune_spaces" / "selection.yaml")
    assert sel.kind == "selection" and {"select.alpha", "select.bound_mode", "prototypes.k"} <= set(sel.params)
    flt = load_space(repo / "tune_spaces" / "filter.yaml")
    assert flt.kind == "filter" and {"filter.min_box", "filter.fill_rate", "filter.purple"} <= set(flt.params)
    rng, base = np.random.default_rng(1), Config().model_dump(mode="json")
    for _ in range(20):
        values = sel.sample(rng)
        cfg = sel.apply(base, values)
        assert cfg.select.alpha == values["select.alpha"] and cfg.prototypes.k in (5, 8, 11)


@pytest.mark.parametrize("text, message", [
    ("kind: selection\nspace:\n  select.alpah: {uniform: [0.1, 1]}\n", "Did you mean 'select.alpha'"),
    ("kind: selection\nspace:\n  selct.alpha: {uniform: [0.1, 1]}\n", "Did you mean 'select.alpha'"),
    ("kind: selection\nspace:\n  select.alpha: {unifrom: [0.1, 1]}\n", "Did you mean 'uniform'"),
    ("kind: selection\nspace:\n  select.alpha: {uniform: [1, 0.1]}\n", "low < high"),
    ("kind: selection\nspace:\n  select.alpha: {uniform: [0.1]}\n", "takes 2 numbers"),
    ("kind: selection\nspace:\n  select.alpha: {uniform: [-1, 1]}\n", "select.alpha"),
    ("kind: selection\nspace:\n  select.bound_mode: {choice: [minmax, maxmin]}\n", "'maxmin'"),
    ("kind: selection\nspace:\n  filter.min_box: {randint: [40, 90]}\n", "may change only select, prototypes"),
    ("kind: selection\nspace:\n  select.lb: {uniform: [10, 20]}\n  select.ub: {uniform: [15, 25]}\n",
     "can produce an invalid configuration"),
    ("kind: tuning\nspace:\n  select.alpha: {uniform: [0.1, 1]}\n", "`kind` must be one of"),
    ("kind: filter\nspaces:\n  filter.min_box: {randint: [40, 90]}\n", "unknown top-level key"),
    ("kind: filter\nspace:\n  filter.min_box: [40, 90]\n", "exactly one distribution"),
])
def test_mistakes_are_errors_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_space(write(tmp_path, text))


def test_overrides_round_trip_lists_and_strings(tmp_path):
    space = load_space(write(tmp_path, "kind: filter\nspace:\n"
                                       "  filter.purple: {choice: [[[[30, 100, 0], [140, 255, 255]]]]}\n"
                                       "  filter.normalize: {grid: [minmax, none]}\n"))
    cfg = space.apply(Config().model_dump(mode="json"),
                      {"filter.purple": [[[30, 100, 0], [140, 255, 255]]], "filter.normalize": "none"})
    assert cfg.filter.purple == [((30, 100, 0), (140, 255, 255))] and cfg.filter.normalize == "none"
