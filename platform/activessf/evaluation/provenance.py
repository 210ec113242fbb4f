"""Which labelled cells shaped what an evaluation scores, and the refusal to score them.

Two steps learn from labelled cells before evaluation: supervised features (``activessf features``,
used for selection through ``embed.weights``) and a selection sweep's probe (``activessf sweep``, whose
``best.yaml`` carries ``sweep.tuned_on``). Each writes ``label_ids.json``: the ids of the cells it
learned from (:func:`~activessf.data.labelled.cell_id`). Fine-tuning and the ablation follow the records
back from what they evaluate,

    finetune.init --encoder.json "selection"--> selection/config.yaml --embed.weights--> label_ids.json beside them
                                                                      --sweep.tuned_on--> the sweep's label_ids.json
    (embed.weights an `activessf pretrain` output: on to its selection, as for bootstrap rounds)

and refuse (:class:`LabelLeak`) when one of the evaluated cells was learned from; where a link cannot be
followed they log a warning and record it. No Ray, no MLflow.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import yaml

from ..data.labelled import cell_id, list_labelled
from ..data.split import ids_digest, split_part
from ..features.backbone import RANDOM_INIT, encoder_record, file_digest

log = logging.getLogger(__name__)

LABEL_IDS = "label_ids.json"
HOW_TO_FIX = ("split the labelled set once with `activessf split --labelled {labelled} --out SPLIT`, train "
              "features and sweep on SPLIT/tune.csv and evaluate on SPLIT/eval.csv (docs/selection.md, "
              "'Labels: tune and evaluate apart'); or set evaluate.allow_leak=true to score anyway, recorded as a "
              "leak in the outputs")


class LabelLeak(ValueError):
    """An evaluation would score cells that the features or the sweep behind it learned from."""


@dataclass(frozen=True)
class LabelSource:
    """Labelled cells something behind an evaluation learned from; ``ids`` None when they cannot be traced."""

    what: str  # "supervised features /f/resnet50_supervised_on_T.pt", "selection sweep /s"
    ids: Optional[frozenset] = None
    record: Optional[str] = None  # its label_ids.json
    labelled: Optional[str] = None  # the labelled set it was given
    note: str = ""  # why it cannot be traced

    def summary(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "ids"},
                "cells": None if self.ids is None else len(self.ids)}


# ------------------------------------------------------------------ label_ids.json


def label_ids_record(pairs: Sequence[tuple[Path, str]], learned_by: str, labelled: str | Path) -> dict:
    """``label_ids.json``: the cells ``learned_by`` learned from (id -> path), their count and digest."""
    ids = {cell_id(p): str(p) for p, _ in pairs}
    return {"learned_by": learned_by, "labelled": str(labelled), "cells": len(ids), "digest": ids_digest(list(ids)),
            "ids": dict(sorted(ids.items()))}


def write_label_ids(out: str | Path, record: dict) -> Path:
    path = Path(out) / LABEL_IDS
    path.write_text(json.dumps(record, indent=1))
    return path


def read_label_ids(path: str | Path, what: str) -> LabelSource:
    """The :class:`LabelSource` of a ``label_ids.json`` (untraced when it is missing or damaged)."""
    path = Path(path)
    if not path.is_file():
        return LabelSource(what, note=f"its record {path} is not found from here")
    data = json.loads(path.read_text())
    if ids_digest(list(data["ids"])) != data["digest"]:
        return LabelSource(what, record=str(path), note=f"{path} is damaged (digest mismatch)")
    return LabelSource(what, frozenset(data["ids"]), str(path), data.get("labelled"))


def refuse_evaluation_part(labelled: str | Path, learner: str) -> None:
    """Raise when ``learner`` (features, a sweep) is given the evaluation part of an `activessf split`."""
    part = split_part(labelled)
    if part and part[0] == "eval":
        raise LabelLeak(f"{labelled} is the evaluation part of the split in {part[1]}: {learner} must not learn "
                        f"from the cells evaluated later; give it {part[1] / 'tune.csv'}")


# ------------------------------------------------------------------ tracing


def weights_sources(spec: Optional[str], seen: Optional[set] = None) -> list[LabelSource]:
    """What the weights ``spec`` (``embed.weights`` or ``finetune.init``) learned from, as far as recorded."""
    if not spec:
        return []
    what = f"weights {spec}"
    if is_uri(spec):
        return [LabelSource(what, note="an MLflow URI: the cells its weights were trained on are not traced")]
    path = Path(spec).expanduser()
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        return [LabelSource(what, note="not found from here")]
    if (folder / "encoder.json").is_file():  # an `activessf pretrain` output: no labels, but its selection may
        return encoder_sources(folder / "encoder.json", seen)
    if (folder / LABEL_IDS).is_file():
        return [read_label_ids(folder / LABEL_IDS, f"supervised features {spec}")]
    if (folder / "features.json").is_file():
        return [LabelSource(what, note="supervised features trained before label_ids.json was recorded: retrain "
                                       "them with `activessf features`")]
    return [LabelSource(what, note="no record of the cells they were trained on (no label_ids.json beside them)")]


def encoder_sources(encoder_json: Path, seen: Optional[set] = None) -> list[LabelSource]:
    """A pretrained encoder learned from no label; pretrained on a selection, it carries that selection's."""
    record = json.loads(Path(encoder_json).read_text())
    if record.get("source") != "selected":
        return []  # every filtered region, or random crops of fields
    if not record.get("selection"):
        return [LabelSource(f"encoder {Path(encoder_json).parent}", note="its encoder.json does not name the "
                            "selection it was pretrained on (pretrained before this was recorded)")]
    return selection_sources(record["selection"], seen)


def selection_sources(selection: str | Path, seen: Optional[set] = None) -> list[LabelSource]:
    """What the features and the settings of a `select` output learned from: its ``config.yaml`` names
    ``embed.weights`` (checked against the weights digest in ``report.json``) and ``sweep.tuned_on``."""
    seen = set() if seen is None else seen
    selection = Path(selection).resolve()
    if selection in seen:
        return []
    seen.add(selection)
    config, report = selection / "config.yaml", selection / "report.json"
    if not (config.is_file() and report.is_file()):
        return [LabelSource(f"selection {selection}", note="no config.yaml and report.json found there")]
    raw = yaml.safe_load(config.read_text()) or {}
    out = [read_label_ids(t, f"selection sweep {Path(t).parent}") for t in (raw.get("sweep") or {}).get("tuned_on") or []]
    digest = json.loads(report.read_text())["prototypes"]["weights_digest"]
    weights = (raw.get("embed") or {}).get("weights")
    if digest == RANDOM_INIT:
        return out
    if not weights:
        return out + [LabelSource(f"selection {selection}", note=f"its features (weights digest {digest}) are not "
                                  "named in its config.yaml (embed.weights)")]
    if not (is_uri(weights) or weights_digest(weights) == digest):
        return out + [LabelSource(f"weights {weights}", note=f"not the file selection {selection} embedded with "
                                  f"(digest {digest}), or not found from here")]
    return out + weights_sources(weights, seen)


def is_uri(spec: str) -> bool:
    return "://" in spec or ":/" in spec


def weights_digest(spec: str) -> Optional[str]:
    """The digest of the local weights ``spec`` names (a file or a `pretrain` output); None if not found."""
    try:
        return file_digest(encoder_record(spec)[1])
    except (OSError, ValueError):
        return None


def config_sources(weights: Optional[str], tuned_on: Iterable[str]) -> list[LabelSource]:
    """What a configuration about to select learned from: its ``embed.weights`` and ``sweep.tuned_on``."""
    return weights_sources(weights) + [read_label_ids(t, f"selection sweep {Path(t).parent}") for t in tuned_on]


# ------------------------------------------------------------------ the check


def check_evaluation(labelled: str | Path, sources: Sequence[LabelSource], allow_leak: bool = False) -> dict:
    """Refuse (:class:`LabelLeak`) to evaluate on ``labelled`` cells that ``sources`` learned from, unless
    ``allow_leak``; warn about sources that cannot be traced. Returns the record outputs keep."""
    traced = [s for s in sources if s.ids is not None]
    for s in sources:
        if s.ids is None:
            log.warning("cannot check the cells evaluated on %s against %s: %s. If it learned from them, the "
                        "scores are optimistic", labelled, s.what, s.note)
    status = "untraced" if len(traced) < len(sources) else "disjoint" if sources else "no labels learned from"
    record = {"status": status, "allow_leak": allow_leak, "sources": [s.summary() for s in sources],
              "leaked_cells": 0}
    if not traced:
        return record
    evaluated = {cell_id(p) for p, _ in list_labelled(labelled)}
    leaks = [(s, len(s.ids & evaluated)) for s in traced if s.ids & evaluated]
    record.update(evaluated_cells=len(evaluated), evaluated_digest=ids_digest(list(evaluated)))
    if not leaks:
        return record
    message = "; ".join(f"{n} of the {len(evaluated)} cells evaluated on {labelled} were learned from by {s.what} "
                        f"(trained on {s.labelled}; {s.record})" for s, n in leaks)
    if not allow_leak:
        raise LabelLeak(f"{message}: the scores would be optimistic. To fix: " + HOW_TO_FIX.format(labelled=labelled))
    log.warning("evaluate.allow_leak: %s. The scores are optimistic; the outputs record this leak", message)
    leaked = set().union(*(s.ids & evaluated for s, _ in leaks))
    return {**record, "status": "leak allowed", "leaked_cells": len(leaked)}
