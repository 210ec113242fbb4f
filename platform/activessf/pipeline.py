"""The whole method on a user's data, stage after stage: ``activessf pipeline`` and ``jobs/pipeline.py``.

    smears ──1 filter──> regions ──2 embed──> embeddings ──3 select──> selection
    labelled ──2 embed──────────────────────┘   (or bootstrap rounds)      │
    selection + regions ──4 pretrain──> encoder ──5 finetune (k folds + final fit)──> model ──register──> registry

Outputs under ``<work_dir>/``: ``regions/``, ``embeddings/{regions,labelled}/`` and
``selection/`` (or, bootstrapping, ``bootstrap/round<r>/`` with each round's encoder,
embeddings and selection), ``encoder/``, ``finetune/activessf/`` (with ``model/``) and
``pipeline.json`` (what ran, where its outputs are, the registration decision).
Each stage is the same function its own command runs, with the same outputs;
the run is one MLflow run with every stage nested.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .bootstrap import bootstraps, run_bootstrap
from .config import Config, apply_overrides, build_config, save_config
from .evaluation.provenance import check_evaluation, config_sources
from .features.backbone import check_backbone
from .runtime import init_ray
from .serving import registry
from .ssl.vit import vit_overrides
from .stage import StageResult, log_results, stage_run
from .stages.embed import run_embed
from .stages.filter import run_filter
from .stages.finetune import run_finetune
from .stages.pretrain import run_pretrain
from .stages.select import run_select
from .tracking import init_mlflow, tracking_uri

log = logging.getLogger(__name__)


def finetune_config(cfg: Config, encoder: Path | None, final_fit: bool = False) -> Config:
    """The ViT that pretraining built, fine-tuned from ``encoder`` (or from scratch with None)."""
    over = vit_overrides(cfg) + ([f"finetune.init={encoder}"] if encoder else []) + \
        (["finetune.final_fit=true"] if final_fit else [])
    return build_config(apply_overrides(cfg.model_dump(mode="json"), over))


def model_parts(cfg: Config) -> tuple[str, ...]:
    """The models of ``cfg`` that the pipeline (and ``bootstrap``) build, for ``check_backbone``:
    pretraining's, and embed.backbone unless every round embeds with a label-free encoder of its own."""
    uses_embed = cfg.embed.weights is not None or not cfg.select.bootstrap
    return ("pretrain", "embed") if uses_embed else ("pretrain",)


def selection_dir(cfg: Config, work: Path) -> Path:
    """Where the pipeline's selection is: ``work/selection``, or the last bootstrap round's (once the
    rounds have run: they may stop early)."""
    if not bootstraps(cfg):
        return work / "selection"
    rounds = work / "bootstrap" / "rounds.json"
    if rounds.is_file():
        return Path(json.loads(rounds.read_text())["selection"])
    return rounds.parent / "round0" / "selection"


def steps(cfg: Config, smears: str, labelled: Path, work: Path) -> dict:
    """The stages in order, each the same function its own command runs, on the outputs before it. With
    ``select.rounds`` > 1, or no ``embed.weights`` and ``select.bootstrap`` on, embedding and selection run
    as bootstrap rounds (``work/bootstrap/``) and pretraining uses the last round's selection."""
    select = {
        "embed-regions": lambda: run_embed(cfg, "regions", work / "regions", work / "embeddings" / "regions",
                                           overwrite=True),
        "embed-labelled": lambda: run_embed(cfg, "labelled", labelled, work / "embeddings" / "labelled",
                                            overwrite=True),
        "select": lambda: run_select(cfg, work / "embeddings" / "regions", work / "selection",
                                     labelled_embeddings=work / "embeddings" / "labelled", regions=work / "regions",
                                     overwrite=True),
    }
    if bootstraps(cfg):
        select = {"bootstrap": lambda: run_bootstrap(cfg, work / "regions", labelled, work / "bootstrap",
                                                     storage=str(work / "ray_results"), overwrite=True)}
    return {
        "filter": lambda: run_filter(cfg, smears, work / "regions", overwrite=True),
        **select,
        "pretrain": lambda: run_pretrain(cfg, work / "encoder", regions=work / "regions",
                                         selection=selection_dir(cfg, work),
                                         name=f"{work.name}-{cfg.pretrain.method}-{cfg.pretrain.digest()[:8]}",
                                         storage=str(work / "ray_results"), overwrite=True),
        "finetune": lambda: run_finetune(finetune_config(cfg, work / "encoder", final_fit=True), labelled,
                                         work / "finetune" / "activessf", name=f"{work.name}-activessf",
                                         overwrite=True),
        "register": lambda: registry.register(work / "finetune" / "activessf", cfg),
    }


def run_pipeline(cfg: Config, smears: str, labelled: Path, register: bool = True) -> dict:
    """Stages 1-5 and registration on ``smears`` (images) and ``labelled`` (ImageFolder or CSV); returns
    the record written to ``pipeline.json``, with each stage's :class:`StageResult` under ``stages``."""
    started = time.time()
    work = Path(cfg.run.work_dir).resolve()
    # stage 5 would refuse to evaluate cells the selection's features or sweep learned from: say so before stage 1
    check_evaluation(labelled, config_sources(cfg.embed.weights, cfg.sweep.tuned_on), cfg.evaluate.allow_leak)
    check_backbone(cfg, model_parts(cfg))  # a misspelt model or weights that do not fit: refused before stage 1
    ray_rt = init_ray(cfg.run.ray_num_cpus, quiet=cfg.run.quiet)
    init_mlflow(work, cfg.run.experiment)
    save_config(cfg, work / "pipeline")
    with stage_run(cfg, "pipeline", {"smears": smears, "labelled": str(labelled)}) as run:
        stages: dict[str, StageResult] = {}
        seconds: dict[str, float] = {}
        for name, step in steps(cfg, smears, Path(labelled), work).items():
            if name == "register" and not register:
                continue
            t0 = time.time()
            stages[name] = step()
            seconds[name] = round(time.time() - t0, 1)
            log.info("pipeline: %s done in %.1f s", name, seconds[name])
        record = {"smears": smears, "labelled": str(labelled), "work_dir": str(work),
                  "selection": str(selection_dir(cfg, work)),
                  "stages": {k: v.to_json() for k, v in stages.items()},
                  "ray": {"started_local": ray_rt.started_local, "cpus": ray_rt.cpus, "gpus": ray_rt.gpus},
                  "mlflow": {"tracking_uri": tracking_uri(work), "run_id": run.info.run_id},
                  "worker_package": worker_package_path(), "seconds": round(time.time() - started, 1),
                  "stage_seconds": seconds}
        (work / "pipeline" / "pipeline.json").write_text(json.dumps(record, indent=2, default=str))
        log_results(work / "pipeline", {"seconds": record["seconds"]}, ["config.yaml", "pipeline.json"])
    return {**record, "stages": stages}


def worker_package_path() -> str:
    """Where a Ray worker imports ``activessf`` from (shows how the package reached the cluster)."""
    import ray

    @ray.remote(num_cpus=0)
    def where() -> str:
        import activessf

        return str(Path(activessf.__file__).parent)

    return ray.get(where.remote())
