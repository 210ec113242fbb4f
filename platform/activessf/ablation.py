"""The paper's method comparison (Table II) and ablation (Table III), on identical folds.

Rows, each one MLflow run (its pretraining and k folds nested under it):

- baselines, supervised from scratch: ``ViT`` (the architecture of ``pretrain.model``)
  and, with ``baselines`` containing ``resnet``, ``ResNet`` (timm ``evaluate.cnn_baseline``);
- for every SSL method M in ``methods`` (mae, mocov3, convmae, mixmim): ``M``, pretrained
  on random crops of whole fields, i.e. *without* ActiveSSF, and ``M + CRF + ASS``,
  pretrained on the selected regions, i.e. *with* ActiveSSF;
- for MAE also ``MAE + CRF`` (filtered regions, no selection): Table III's middle row.

Table II lists the baselines and "M w/o ActiveSSF" / "M w/ ActiveSSF" for every
method, marking a significant gain of w/ over w/o (corrected resampled t-test over the splits);
Table III the MAE rows. The ViT rows fine-tune the encoder their method exported
(``encoder.json`` names its architecture), so rows of one method differ only in
what the encoder was pretrained on.

Output: ``OUT/<row>/`` (the pretraining and fine-tuning outputs of each row),
``OUT/report.md``, ``OUT/report.html``, ``OUT/figure3.png``, ``OUT/ablation.json``, ``OUT/pictures/`` (Fig. 4:
PR curves and misclassified cells of the two runs Fig. 3 shows).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from typing import Optional, Sequence

from .config import Config, apply_overrides, build_config
from .evaluation.provenance import check_evaluation, selection_sources, weights_sources
from .evaluation.report import load_run, write_report
from .ssl import METHODS
from .ssl.vit import vit_overrides
from .stage import StageResult, log_results, stage_run, staged_output
from .stages.finetune import run_finetune
from .stages.pretrain import run_pretrain, selected_ids
from .resources import plan
from .training.schedule import budget

log = logging.getLogger(__name__)

FILES = ("report.html", "report.md", "figure3.png", "ablation.json", "pictures")

SOURCES = (("fields", "", {"CRF": False, "ASS": False}),
           ("filtered", " + CRF", {"CRF": True, "ASS": False}),
           ("selected", " + CRF + ASS", {"CRF": True, "ASS": True}))
BASELINES = {"resnet": "ResNet", "vit": "ViT"}
TABLE3_METHOD = "mae"  # Table III ablates MAE; other methods skip its filtered-only row


def rows_for(methods: Sequence[str], baselines: Sequence[str] = ("vit",)) -> list[dict]:
    """The rows to run, in report order; ``table2`` is a row's Table II label (None: Table III only)."""
    unknown = [b for b in baselines if b not in BASELINES] + [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}: baselines are {sorted(BASELINES)}, "
                         f"methods {sorted(METHODS)}")
    rows = [{"name": BASELINES[b], "method": None, "source": None, "baseline": b, "table2": BASELINES[b],
             "components": {"ViT": b == "vit"}} for b in BASELINES if b in baselines]
    for m in methods:
        for source, suffix, comps in SOURCES:
            if source == "filtered" and m != TABLE3_METHOD:
                continue
            label = METHODS[m].label
            table2 = {"fields": f"{label} w/o ActiveSSF", "selected": f"{label} w/ ActiveSSF"}.get(source)
            rows.append({"name": f"{label}{suffix}", "method": m, "source": source, "baseline": None,
                         "table2": table2, "components": {"ViT": True, "MAE": m == TABLE3_METHOD, **comps}})
    return rows


def pairs_for(rows: list[dict]) -> dict[str, str]:
    """Candidate row -> its baseline row: w/ and CRF-only against w/o ActiveSSF (or, when that row is
    not run, against the ViT from scratch); MAE against the ViT."""
    names = {r["name"] for r in rows}
    pairs = {}
    for r in rows:
        if r["method"] and r["source"] != "fields":
            without = METHODS[r["method"]].label
            if without in names or "ViT" in names:
                pairs[r["name"]] = without if without in names else "ViT"
    if "ViT" in names and METHODS[TABLE3_METHOD].label in names:
        pairs[METHODS[TABLE3_METHOD].label] = "ViT"
    return pairs


def pick_rows(rows: list[dict], names: Optional[Sequence[str]]) -> list[dict]:
    """The rows called ``names`` (all when None), in report order; an unknown name is an error."""
    if names is None:
        return rows
    known = [r["name"] for r in rows]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; with these methods and baselines the rows are {known}")
    return [r for r in rows if r["name"] in names]


def table3_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["baseline"] == "vit" or r["method"] == TABLE3_METHOD]


def finetune_overrides(cfg: Config, row: dict) -> list[str]:
    """The classifier of a row: the ViT pretraining builds, or the supervised CNN baseline."""
    if row["baseline"] == "resnet":
        return [f"finetune.backbone={cfg.evaluate.cnn_baseline}", "finetune.backbone_kwargs={}",
                f"finetune.image_size={cfg.pretrain.image_size}"]
    return vit_overrides(cfg)


def run_ablation(cfg: Config, labelled: str | Path, out: str | Path, *, regions: Optional[str | Path] = None,
                 selection: Optional[str | Path] = None, fields: Optional[str] = None,
                 methods: Sequence[str] = ("mae",), baselines: Sequence[str] = ("vit",),
                 rows: Optional[Sequence[str]] = None, encoders: Optional[dict] = None,
                 finetunes: Optional[dict] = None, overwrite: bool = False) -> StageResult:
    """Run every row (or the ``rows`` named) on the same folds and write the report.

    ``encoders`` may map (method, source) to an existing `pretrain` output to reuse instead of
    pretraining; ``finetunes`` a row name to an existing `finetune` output to reuse instead of
    fine-tuning (every other row then uses its folds). The result's summary holds the record
    (``ablation.json``), every row's fine-tuning record (``runs``) and the compared pairs.
    """
    finetunes = {name: Path(d) for name, d in (finetunes or {}).items()}
    rows = pick_rows(rows_for(methods, baselines), rows)
    folds_file = next((d / "folds.json" for d in finetunes.values()), None)
    inputs = {"labelled": labelled, "regions": regions, "selection": selection, "fields": fields}
    params = {"rows": ", ".join(r["name"] for r in rows), **{k: str(v) for k, v in inputs.items()}}
    trains = any(r["method"] and r["name"] not in finetunes and (r["method"], r["source"]) not in (encoders or {})
                 for r in rows)
    labels = label_check(cfg, labelled, rows, selection, encoders)  # refuses before any training
    params.update(label_check=labels["status"], leaked_cells=labels["leaked_cells"])
    steps = pretrain_steps(cfg, selection, plan("pretrain", cfg).workers) if trains else None
    with staged_output(out, overwrite) as stage, stage_run(cfg, "ablation", params) as run:
        runs, budgets = {}, {}
        for row in rows:
            if row["name"] in finetunes:  # a finished run: its record, nothing retrained
                runs[row["name"]] = load_run(finetunes[row["name"]])
            else:
                runs[row["name"]], budgets[row["name"]] = run_row(stage, cfg, row, inputs, encoders, folds_file, steps)
                folds_file = folds_file or stage / row_slug(row) / "finetune" / "folds.json"
            if len({r["folds_digest"] for r in runs.values()}) > 1:
                raise ValueError(f"row {row['name']!r} was evaluated on other folds than the rows before it: a "
                                 "reused fine-tuning run must use the folds of the others (fine-tune it with --folds)")
        pairs = pairs_for(rows)
        write_report(runs, stage, "ActiveSSF ablation", pairs, ablation=table3_rows(rows),
                     level=cfg.evaluate.significance, table2={r["name"]: r["table2"] for r in rows if r["table2"]},
                     run_dirs={r["name"]: finetunes.get(r["name"], stage / row_slug(r) / "finetune") for r in rows})
        budgets = {k: v for k, v in budgets.items() if v}
        record = {"rows": rows, "folds": str(folds_file), "label_check": labels,
                  "table2": {r["name"]: r["table2"] for r in rows if r["table2"]},
                  "summary": {k: v["summary"] for k, v in runs.items()}, "pretrain_steps": steps, "budgets": budgets,
                  "equal_budgets": equal_budgets(budgets, steps)}
        if not record["equal_budgets"]:
            log.warning("the pretrained rows trained for unequal optimiser steps (%s): a row may win on steps alone",
                        ", ".join(f"{k} {b['steps']}" for k, b in budgets.items()))
        (stage / "ablation.json").write_text(json.dumps(record, indent=1))
        with open(stage / "report.md", "a") as fh:
            fh.write(format_budgets(budgets, steps))
        log_results(stage, {}, FILES)
    return StageResult("ablation", Path(out).resolve(), {**record, "runs": runs, "pairs": pairs}, run.info.run_id,
                       FILES)


def label_check(cfg: Config, labelled: str | Path, rows: list[dict], selection: Optional[str | Path],
                encoders: Optional[dict]) -> dict:
    """``evaluation.provenance``'s check of the rows' encoders: pretrained on ``selection`` (whose features or
    sweep may have learned from labelled cells) or reused from ``encoders``; a refusal names the fix."""
    encoders = encoders or {}
    sources = [s for enc in encoders.values() for s in weights_sources(str(enc))]
    if selection and any(r["source"] == "selected" and (r["method"], "selected") not in encoders for r in rows):
        sources += selection_sources(selection)
    return check_evaluation(labelled, sources, cfg.evaluate.allow_leak)


def run_row(stage: Path, cfg: Config, row: dict, inputs: dict, encoders: Optional[dict],
            folds_file: Optional[Path], steps: Optional[int] = None) -> tuple[dict, Optional[dict]]:
    """One row as an MLflow run: its pretraining (unless ``encoders`` has it; ``steps`` optimiser steps when
    given), then k-fold fine-tuning; returns the fine-tuning record and the encoder's budget (or None)."""
    base = cfg.model_dump(mode="json")
    slug = row_slug(row)
    with stage_run(cfg, "ablation-row", {"row": row["name"]}, row["name"]):
        over = finetune_overrides(cfg, row)
        if row["method"]:
            reuse = (encoders or {}).get((row["method"], row["source"]))
            if reuse is None:
                pcfg = build_config(row_pretrain(base, row, steps))
                run_pretrain(pcfg, stage / slug / "encoder", regions=inputs["regions"],
                             selection=inputs["selection"], fields=inputs["fields"],
                             name=f"ablation-{slug}-{pcfg.pretrain.digest()[:8]}")
                reuse = stage / slug / "encoder"
            over.append(f"finetune.init={reuse}")
        result = run_finetune(build_config(apply_overrides(base, over)), inputs["labelled"], stage / slug / "finetune",
                              folds_file=folds_file, name=f"ablation-{slug}")
        return dict(result.summary), (encoder_budget(Path(reuse)) if row["method"] else None)


def row_pretrain(base: dict, row: dict, steps: Optional[int] = None) -> dict:
    """The pretraining config of a row: its method and source (and ``steps``, the ablation's equal budget);
    ``pretrain.options`` belong to the configured method, so a row of another method uses its defaults."""
    p = {**base["pretrain"], "method": row["method"], "source": row["source"], "steps": steps,
         **({"images": None} if steps else {})}
    if row["method"] != base["pretrain"]["method"]:
        p["options"] = {}
    return {**base, "pretrain": p}


def pretrain_steps(cfg: Config, selection: Optional[str | Path], workers: int) -> Optional[int]:
    """The optimiser steps every pretraining row gets (``evaluate.equal_steps``): ``pretrain.steps`` (or
    ``pretrain.images``) when set,
    else what the selected regions take in ``pretrain.epochs`` on ``workers``; None (epochs) without equal
    steps or a selection to size them from."""
    p = cfg.pretrain
    if not cfg.evaluate.equal_steps or p.step_target():
        return p.step_target()
    if selection is None:
        return None
    kept = len(selected_ids(Path(selection)))
    return budget(kept, p.batch_size, workers, p.accum_steps, p.epochs, None)["steps"]


def encoder_budget(encoder: Path) -> Optional[dict]:
    """The training budget a pretraining output recorded (None for encoders from before budgets)."""
    record = encoder / "encoder.json"
    return json.loads(record.read_text()).get("budget") if record.is_file() else None


def equal_budgets(budgets: dict[str, dict], steps: Optional[int]) -> bool:
    """Whether the rows trained alike: the same steps, or with a target ``steps``, each reached it in whole
    epochs (at least ``steps``, less than one of its epochs over)."""
    if steps is None or any("steps_per_epoch" not in b for b in budgets.values()):
        return len({b["steps"] for b in budgets.values()}) <= 1
    return all(steps <= b["steps"] < steps + b["steps_per_epoch"] for b in budgets.values())


def format_budgets(budgets: dict[str, dict], steps: Optional[int]) -> str:
    """The report's table of what each pretrained row trained for."""
    if not budgets:
        return ""
    rule = f"equal optimiser steps ({steps})" if steps else "pretrain.epochs on every pool"
    lines = ["", "## Pretraining budgets", "", f"Rows pretrained with {rule}.", "",
             "| Row | Epochs | Optimiser steps | Images seen | Wall time (s) |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {b['epochs']} | {b['steps']} | {b['images_seen']} | {b.get('seconds', 'n/a')} |"
              for k, b in budgets.items()]
    if not equal_budgets(budgets, steps):
        lines += ["", "**The rows trained for unequal steps: a row may win on steps alone.**"]
    elif steps and any(b["steps"] != steps for b in budgets.values()):
        over = max(b["steps"] / steps - 1 for b in budgets.values())
        lines += ["", f"Each row trains whole epochs, so it reaches {steps} steps within its last epoch (at most "
                  f"{100 * over:.1f}% over)."]
    return "\n".join(lines) + "\n"


def row_slug(row: dict) -> str:
    """A row's folder name under the ablation output: "MAE + CRF + ASS" -> "mae_crf_ass"."""
    return row["name"].replace(" + ", "_").replace(" ", "").lower()
