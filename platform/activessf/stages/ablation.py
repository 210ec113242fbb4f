"""The paper's method comparison (Table II) and ablation (Table III), on identical folds.

Rows, each one MLflow run (its pretraining and k folds nested under it):

- baselines, supervised from scratch: ``ViT`` (the architecture of ``pretrain.model``)
  and, with ``baselines`` containing ``resnet``, ``ResNet`` (timm ``evaluate.cnn_baseline``);
- for every SSL method M in ``methods`` (mae, mocov3, convmae, mixmim): ``M``, pretrained
  on random crops of whole fields, i.e. *without* ActiveSSF, and ``M + CRF + ASS``,
  pretrained on the selected regions, i.e. *with* ActiveSSF;
- for MAE also ``MAE + CRF`` (filtered regions, no selection): Table III's middle row.

Table II lists the baselines and "M w/o ActiveSSF" / "M w/ ActiveSSF" for every
method, marking a significant gain of w/ over w/o (paired t-test on the folds);
Table III the MAE rows. The ViT rows fine-tune the encoder their method exported
(``encoder.json`` names its architecture), so rows of one method differ only in
what the encoder was pretrained on.

Output: ``OUT/<row>/`` (the pretraining and fine-tuning outputs of each row),
``OUT/report.md``, ``OUT/report.html``, ``OUT/figure3.png``, ``OUT/ablation.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from ..config import Config
from ..ssl.vit import SIZES
from .outputs import staged_output

log = logging.getLogger(__name__)

SOURCES = (("fields", "", {"CRF": False, "ASS": False}),
           ("filtered", " + CRF", {"CRF": True, "ASS": False}),
           ("selected", " + CRF + ASS", {"CRF": True, "ASS": True}))
LABELS = {"mae": "MAE", "mocov3": "MoCo v3", "convmae": "ConvMAE", "mixmim": "MixMIM"}
BASELINES = {"resnet": "ResNet", "vit": "ViT"}
TABLE3_METHOD = "mae"  # Table III ablates MAE; other methods skip its filtered-only row


def vit_overrides(cfg: Config) -> list[str]:
    """Fine-tune the ViT architecture that pretraining builds, at its input size."""
    p = cfg.pretrain
    s = SIZES[p.model]
    kwargs = f"{{img_size: {p.image_size}, patch_size: {p.patch_size}, embed_dim: {s.dim}, depth: {s.depth}, " \
             f"num_heads: {s.heads}}}"
    return [f"finetune.backbone={s.timm_name}", f"finetune.backbone_kwargs={kwargs}",
            f"finetune.image_size={p.image_size}"]


def rows_for(methods: Sequence[str], baselines: Sequence[str] = ("vit",)) -> list[dict]:
    """The rows to run, in report order; ``table2`` is a row's Table II label (None: Table III only)."""
    unknown = [b for b in baselines if b not in BASELINES] + [m for m in methods if m not in LABELS]
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}: baselines are {sorted(BASELINES)}, "
                         f"methods {sorted(LABELS)}")
    rows = [{"name": BASELINES[b], "method": None, "source": None, "baseline": b, "table2": BASELINES[b],
             "components": {"ViT": b == "vit"}} for b in BASELINES if b in baselines]
    for m in methods:
        for source, suffix, comps in SOURCES:
            if source == "filtered" and m != TABLE3_METHOD:
                continue
            table2 = {"fields": f"{LABELS[m]} w/o ActiveSSF", "selected": f"{LABELS[m]} w/ ActiveSSF"}.get(source)
            rows.append({"name": f"{LABELS[m]}{suffix}", "method": m, "source": source, "baseline": None,
                         "table2": table2, "components": {"ViT": True, "MAE": m == TABLE3_METHOD, **comps}})
    return rows


def pairs_for(rows: list[dict]) -> dict[str, str]:
    """Candidate row -> its baseline row: w/ and CRF-only against w/o ActiveSSF (or, when that row is
    not run, against the ViT from scratch); MAE against the ViT."""
    names = {r["name"] for r in rows}
    pairs = {}
    for r in rows:
        if r["method"] and r["source"] != "fields":
            without = LABELS[r["method"]]
            if without in names or "ViT" in names:
                pairs[r["name"]] = without if without in names else "ViT"
    if "ViT" in names and LABELS[TABLE3_METHOD] in names:
        pairs[LABELS[TABLE3_METHOD]] = "ViT"
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


def run_ablation(out: str | Path, cfg: Config, labelled: str | Path, regions: Optional[str | Path],
                 selection: Optional[str | Path], fields: Optional[str], methods: Sequence[str] = ("mae",),
                 overwrite: bool = False, encoders: Optional[dict] = None,
                 baselines: Sequence[str] = ("vit",), rows: Optional[Sequence[str]] = None,
                 finetunes: Optional[dict] = None) -> dict:
    """Run every row (or the ``rows`` named) on the same folds and write the report.

    ``encoders`` may map (method, source) to an existing `pretrain` output to reuse instead of
    pretraining; ``finetunes`` a row name to an existing `finetune` output to reuse instead of
    fine-tuning (every other row then uses its folds).
    """
    import mlflow

    from ..evaluation.report import load_run, write_report

    finetunes = {name: Path(d) for name, d in (finetunes or {}).items()}
    rows = pick_rows(rows_for(methods, baselines), rows)
    folds_file = next((d / "folds.json" for d in finetunes.values()), None)
    with staged_output(out, overwrite) as stage, mlflow.start_run(
        run_name="ablation", nested=mlflow.active_run() is not None
    ):
        runs = {}
        for row in rows:
            if row["name"] in finetunes:  # a finished run: its record, nothing retrained
                runs[row["name"]] = load_run(finetunes[row["name"]])
            else:
                runs[row["name"]] = run_row(stage, cfg, row, labelled, regions, selection, fields, encoders,
                                            folds_file)
                folds_file = folds_file or stage / row_slug(row) / "finetune" / "folds.json"
            if len({run["folds_digest"] for run in runs.values()}) > 1:
                raise ValueError(f"row {row['name']!r} was evaluated on other folds than the rows before it: a "
                                 "reused fine-tuning run must use the folds of the others (fine-tune it with --folds)")
        pairs = pairs_for(rows)
        write_report(runs, stage, "ActiveSSF ablation", pairs, ablation=table3_rows(rows),
                     level=cfg.evaluate.significance, table2={r["name"]: r["table2"] for r in rows if r["table2"]})
        labels = {r["name"]: r["table2"] for r in rows if r["table2"]}
        record = {"rows": rows, "folds": str(folds_file), "table2": labels,
                  "summary": {k: v["summary"] for k, v in runs.items()}}
        (stage / "ablation.json").write_text(json.dumps(record, indent=1))
        mlflow.log_artifact(str(stage / "report.html"))
        mlflow.log_artifact(str(stage / "report.md"))
        mlflow.log_artifact(str(stage / "figure3.png"))
    return {"runs": runs, "pairs": pairs, "record": record}


def run_row(stage: Path, cfg: Config, row: dict, labelled, regions, selection, fields, encoders: Optional[dict],
            folds_file: Optional[Path]) -> dict:
    """One row as an MLflow run: its pretraining (unless ``encoders`` has it), then k-fold fine-tuning."""
    import mlflow

    from ..config import apply_overrides, build_config, merge
    from .finetune import run_finetune
    from .pretrain import run_pretrain

    base = cfg.model_dump(mode="json")
    slug = row_slug(row)
    with mlflow.start_run(run_name=row["name"], nested=True):
        over = finetune_overrides(cfg, row)
        if row["method"]:
            reuse = (encoders or {}).get((row["method"], row["source"]))
            if reuse is None:
                pcfg = build_config(merge(base, {"pretrain": {"method": row["method"], "source": row["source"]}}))
                run_pretrain(stage / slug / "encoder", pcfg, regions, selection, fields,
                             name=f"ablation-{slug}-{pcfg.pretrain.digest()[:8]}")
                reuse = stage / slug / "encoder"
            over.append(f"finetune.init={reuse}")
        return run_finetune(labelled, stage / slug / "finetune", build_config(apply_overrides(base, over)),
                            folds_file, name=f"ablation-{slug}")


def row_slug(row: dict) -> str:
    """A row's folder name under the ablation output: "MAE + CRF + ASS" -> "mae_crf_ass"."""
    return row["name"].replace(" + ", "_").replace(" ", "").lower()
