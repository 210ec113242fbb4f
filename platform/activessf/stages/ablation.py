"""The paper's ablation (Table III) and method comparison (Table II), on identical folds.

Rows: a supervised ViT from scratch; + MAE pretrained on random crops of whole
fields (no filtering); + MAE on filtered regions (CRF); + MAE on selected
regions (CRF + ASS). ``methods`` adds the same three pretraining rows for
other SSL methods (e.g. MoCo v3). The ViT of every row has the architecture
of ``pretrain.model``, so rows differ only in what the encoder was pretrained
on. Each row is one MLflow run (pretraining and k folds nested under it).

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
LABELS = {"mae": "MAE", "mocov3": "MoCo v3"}


def vit_overrides(cfg: Config) -> list[str]:
    """Fine-tune the ViT architecture that pretraining builds, at its input size."""
    p = cfg.pretrain
    s = SIZES[p.model]
    kwargs = f"{{img_size: {p.image_size}, patch_size: {p.patch_size}, embed_dim: {s.dim}, depth: {s.depth}, " \
             f"num_heads: {s.heads}}}"
    return [f"finetune.backbone={s.timm_name}", f"finetune.backbone_kwargs={kwargs}",
            f"finetune.image_size={p.image_size}"]


def rows_for(methods: Sequence[str]) -> list[dict]:
    rows = [{"name": "ViT", "method": None, "source": None, "components": {"ViT": True}}]
    for m in methods:
        for source, suffix, comps in SOURCES:
            rows.append({"name": f"{LABELS.get(m, m)}{suffix}", "method": m, "source": source,
                         "components": {"ViT": True, "MAE": m == "mae", **comps}})
    return rows


def run_ablation(out: str | Path, cfg: Config, labelled: str | Path, regions: Optional[str | Path],
                 selection: Optional[str | Path], fields: Optional[str], methods: Sequence[str] = ("mae",),
                 overwrite: bool = False, encoders: Optional[dict] = None) -> dict:
    """Run every row on the same folds and write the report. ``encoders`` may map
    (method, source) to an existing `pretrain` output to reuse instead of pretraining."""
    import mlflow

    from ..config import build_config, merge
    from ..evaluation.report import load_run, write_report
    from .finetune import run_finetune
    from .pretrain import run_pretrain

    base = cfg.model_dump(mode="json")
    with staged_output(out, overwrite) as stage, mlflow.start_run(
        run_name="ablation", nested=mlflow.active_run() is not None
    ):
        folds_file, runs, rows = None, {}, rows_for(methods)
        for row in rows:
            slug = row["name"].replace(" + ", "_").replace(" ", "").lower()
            with mlflow.start_run(run_name=row["name"], nested=True):
                over = vit_overrides(cfg)
                if row["method"]:
                    reuse = (encoders or {}).get((row["method"], row["source"]))
                    if reuse is None:
                        pcfg = build_config(merge(base, {"pretrain": {"method": row["method"], "source": row["source"]}}))
                        run_pretrain(stage / slug / "encoder", pcfg, regions, selection, fields,
                                     name=f"ablation-{slug}-{pcfg.pretrain.digest()[:8]}")
                        reuse = stage / slug / "encoder"
                    over.append(f"finetune.init={reuse}")
                from ..config import apply_overrides

                fcfg = build_config(apply_overrides(base, over))
                runs[row["name"]] = run_finetune(labelled, stage / slug / "finetune", fcfg, folds_file,
                                                 name=f"ablation-{slug}")
                folds_file = folds_file or stage / slug / "finetune" / "folds.json"
        pairs = {}
        for m in methods:
            label = LABELS.get(m, m)
            pairs[f"{label} + CRF + ASS"] = label  # w/ ActiveSSF vs w/o (Table II)
            pairs[f"{label} + CRF"] = label
        pairs[LABELS.get(methods[0], methods[0])] = "ViT" if methods else None
        write_report(runs, stage, "ActiveSSF ablation", {k: v for k, v in pairs.items() if v},
                     ablation=[r for r in rows if r["method"] in (None, "mae")], level=cfg.evaluate.significance)
        record = {"rows": rows, "folds": str(folds_file), "summary": {k: v["summary"] for k, v in runs.items()}}
        (stage / "ablation.json").write_text(json.dumps(record, indent=1))
        mlflow.log_artifact(str(stage / "report.html"))
        mlflow.log_artifact(str(stage / "report.md"))
        mlflow.log_artifact(str(stage / "figure3.png"))
    return {"runs": runs, "pairs": pairs, "record": record}
