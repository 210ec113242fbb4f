"""The whole method on a user's data, stage after stage: ``activessf pipeline`` and ``jobs/pipeline.py``.

    smears ──1 filter──> regions ──2 embed──> embeddings ──3 select──> selection
    labelled ──2 embed──────────────────────┘                              │
    selection + regions ──4 pretrain──> encoder ──5 finetune (k folds + final fit)──> model ──register──> registry

Outputs under ``<work_dir>/``: ``regions/``, ``embeddings/{regions,labelled}/``,
``selection/``, ``encoder/``, ``finetune/activessf/`` (with ``model/``) and
``pipeline.json`` (what ran, where its outputs are, the registration decision).
Each stage is the same function its own command runs, with the same outputs;
the run is one MLflow run with every stage nested.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .config import Config, apply_overrides, build_config, save_config

log = logging.getLogger(__name__)


def filter_stage(cfg: Config, smears: str, out: Path) -> dict:
    from .stages.filter import log_to_mlflow, run_filter

    summary = run_filter(smears, out, cfg, overwrite=True)
    log_to_mlflow(out, cfg, smears, summary)
    return {"output": str(out), "summary": summary}


def select_stage(cfg: Config, labelled: Path, work: Path) -> dict:
    from .stages.embed import run_embed
    from .stages.select import log_to_mlflow, run_select

    run_embed("regions", work / "regions", work / "embeddings" / "regions", cfg, overwrite=True)
    run_embed("labelled", labelled, work / "embeddings" / "labelled", cfg, overwrite=True)
    report = run_select(work / "embeddings" / "regions", work / "selection", cfg,
                        labelled_embeddings=work / "embeddings" / "labelled", regions=work / "regions", overwrite=True)
    log_to_mlflow(work / "selection", cfg, report)
    return {"output": str(work / "selection"), "report": report}


def pretrain_stage(cfg: Config, work: Path) -> dict:
    from .stages.pretrain import run_pretrain

    record = run_pretrain(work / "encoder", cfg, regions=work / "regions", selection=work / "selection",
                          name=f"{work.name}-{cfg.pretrain.method}-{cfg.pretrain.digest()[:8]}",
                          storage=str(work / "ray_results"), overwrite=True)
    return {"output": str(work / "encoder"), "record": record}


def finetune_config(cfg: Config, encoder: Path | None, final_fit: bool = False) -> Config:
    """The ViT that pretraining built, fine-tuned from ``encoder`` (or from scratch with None)."""
    from .stages.ablation import vit_overrides

    over = vit_overrides(cfg) + ([f"finetune.init={encoder}"] if encoder else []) + \
        (["finetune.final_fit=true"] if final_fit else [])
    return build_config(apply_overrides(cfg.model_dump(mode="json"), over))


def finetune_stage(cfg: Config, labelled: Path, work: Path, folds: Path | None = None) -> dict:
    """k-fold fine-tuning of the stage-4 encoder, plus the final fit on every sample (to register)."""
    from .stages.finetune import run_finetune

    out = work / "finetune" / "activessf"
    record = run_finetune(labelled, out, finetune_config(cfg, work / "encoder", final_fit=True), folds_file=folds,
                          name=f"{work.name}-activessf", overwrite=True)
    return {"output": str(out), "record": record}


def register_stage(cfg: Config, finetune_out: Path) -> dict:
    from .serving.registry import register

    return register(finetune_out, cfg)


def run_pipeline(cfg: Config, smears: str, labelled: Path, register: bool = True) -> dict:
    """Stages 1-5 and registration on ``smears`` (images) and ``labelled`` (ImageFolder or CSV)."""
    import mlflow

    from .runtime import init_ray
    from .tracking import init_mlflow, tracking_uri

    started = time.time()
    work = Path(cfg.run.work_dir).resolve()
    ray_rt = init_ray(cfg.run.ray_num_cpus)
    init_mlflow(work, cfg.run.experiment)
    save_config(cfg, work / "pipeline")
    with mlflow.start_run(run_name="pipeline", nested=mlflow.active_run() is not None) as run:
        mlflow.log_artifact(str(work / "pipeline" / "config.yaml"))
        steps = {"filter": lambda: filter_stage(cfg, smears, work / "regions"),
                 "select": lambda: select_stage(cfg, Path(labelled), work),
                 "pretrain": lambda: pretrain_stage(cfg, work),
                 "finetune": lambda: finetune_stage(cfg, Path(labelled), work),
                 "register": lambda: register_stage(cfg, work / "finetune" / "activessf")}
        stages, seconds = {}, {}
        for name, step in steps.items():
            if name == "register" and not register:
                continue
            t0 = time.time()
            stages[name] = step()
            seconds[name] = round(time.time() - t0, 1)
            log.info("pipeline: %s done in %.1f s", name, seconds[name])
        record = {"smears": smears, "labelled": str(labelled), "work_dir": str(work), "stages": stages,
                  "ray": {"started_local": ray_rt.started_local, "cpus": ray_rt.cpus, "gpus": ray_rt.gpus},
                  "mlflow": {"tracking_uri": tracking_uri(work), "run_id": run.info.run_id},
                  "worker_package": worker_package_path(), "seconds": round(time.time() - started, 1),
                  "stage_seconds": seconds}
        (work / "pipeline" / "pipeline.json").write_text(json.dumps(record, indent=2, default=str))
        mlflow.log_artifact(str(work / "pipeline" / "pipeline.json"))
    return record


def worker_package_path() -> str:
    """Where a Ray worker imports ``activessf`` from (shows how the package reached the cluster)."""
    import ray

    @ray.remote(num_cpus=0)
    def where() -> str:
        import activessf

        return str(Path(activessf.__file__).parent)

    return ray.get(where.remote())
