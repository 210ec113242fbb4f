"""Selection on label-free features: bootstrap rounds of pretrain -> embed -> select (``select.rounds``).

No pretrained weights can be downloaded, and a randomly initialised backbone
makes prototypes and thresholds mean little. So, with no ``embed.weights``
(and ``select.bootstrap`` on), round 0 first pretrains ``pretrain.method`` on
*every* filtered region for a short budget (``select.bootstrap_epochs`` or
``select.bootstrap_steps``) and embeds the regions and the labelled cells with
that encoder; no label is used to train it. Each further round pretrains on
the previous round's selection, re-embeds and reselects. With weights given,
round 0 uses them (the paper), and further rounds bootstrap from there.

Output (``OUT``):

    round0/encoder/        the round's encoder (absent when round 0 uses given weights)
    round0/embeddings/{regions,labelled}/
    round0/selection/      the round's `select` output
    round1/...
    rounds.json            per round: encoder, selected count, Jaccard overlap with the previous round and,
                           given region classes, the rare-class and distractor shares vs random selection

Every round is an MLflow run (``bootstrap-round<r>``) with its stages nested, under the bootstrap's run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow.parquet as pq

from .config import Config, apply_overrides, build_config
from .selection.evaluate import json_safe, selection_evidence
from .stage import StageResult, check_output, log_labelled_input, log_regions_input, log_results, stage_run
from .stages.embed import run_embed
from .stages.pretrain import run_pretrain
from .stages.select import run_select

log = logging.getLogger(__name__)


def bootstraps(cfg: Config) -> bool:
    """Whether selection runs in rounds here: more than one round, or no weights and bootstrapping on."""
    return cfg.select.rounds > 1 or (cfg.embed.weights is None and cfg.select.bootstrap)


def round_config(cfg: Config, source: str, weights: Optional[Path], own_encoder: bool = False) -> Config:
    """``cfg`` for one round: pretraining on ``source`` for the bootstrap budget, embedding with ``weights``
    (at the size it was pretrained at, when it is the round's ``own_encoder``)."""
    s = cfg.select
    over = [f"pretrain.source={source}", f"pretrain.epochs={s.bootstrap_epochs}",
            f"pretrain.warmup_epochs={min(cfg.pretrain.warmup_epochs, s.bootstrap_epochs - 1)}",
            f"pretrain.checkpoint_every={min(cfg.pretrain.checkpoint_every, s.bootstrap_epochs)}",
            f"pretrain.steps={s.bootstrap_steps if s.bootstrap_steps else 'null'}", "pretrain.images=null"]
    if weights is not None:
        over.append(f"embed.weights={weights}")
    if own_encoder:
        over.append(f"embed.image_size={cfg.pretrain.image_size}")
    return build_config(apply_overrides(cfg.model_dump(mode="json"), over))


def selected_set(selection: Path) -> set:
    t = pq.read_table(selection / "selection", columns=["region_id", "selected"]).to_pydict()
    return {r for r, s in zip(t["region_id"], t["selected"]) if s}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def round_record(r: int, selection: Path, previous: Optional[set], encoder: Optional[Path], weights: Optional[str],
                 truth: Optional[dict], rare: set, seed: int) -> tuple[dict, set]:
    """One line of ``rounds.json`` and the round's selected ids."""
    chosen = selected_set(selection)
    overlap = None if previous is None else round(jaccard(chosen, previous), 4)
    rec = {"round": r, "encoder": str(encoder) if encoder else None, "weights": weights, "selection": str(selection),
           "selected": len(chosen), "jaccard_previous": overlap}
    if truth:
        t = pq.read_table(selection / "selection", columns=["region_id", "selected"]).to_pydict()
        classes = np.array([truth.get(i, "unlabelled") for i in t["region_id"]], dtype=object)
        ev = selection_evidence(classes, np.array(t["selected"], bool), rare, seed=seed)
        rec["evidence"] = json_safe({k: ev[k] for k in ("rare_share_filtered", "rare_share_selected", "rare_enrichment",
                                              "distractor_share_filtered", "distractor_share_selected", "random")})
    return rec, chosen


def run_bootstrap(cfg: Config, regions: str | Path, labelled: str | Path, out: str | Path, *,
                  truth: Optional[dict] = None, rare: frozenset = frozenset(), storage: Optional[str] = None,
                  overwrite: bool = False) -> StageResult:
    """``select.rounds`` rounds of (pretrain ->) embed -> select on the filter output ``regions`` and the
    ``labelled`` cells. ``truth`` (region id -> class, e.g. from ``select-eval``'s matching) adds the
    rare-class and distractor shares per round. The result's summary is ``rounds.json``; its
    ``selection`` and ``embeddings`` are the last round's (rounds stop early, and ``stopped`` says why,
    when a round keeps fewer regions than a pretraining batch)."""
    out = check_output(out, overwrite).resolve()
    (out / "rounds.json").unlink(missing_ok=True)  # rewritten when every round has run
    regions, labelled = Path(regions), Path(labelled)
    if cfg.embed.weights is None and not cfg.select.bootstrap:
        log.warning("select.bootstrap is false and embed.weights is not set: round 0 embeds with a RANDOMLY "
                    "INITIALISED %s", cfg.embed.backbone)
    params = {"rounds": cfg.select.rounds, "bootstrap_epochs": cfg.select.bootstrap_epochs,
              "bootstrap_steps": cfg.select.bootstrap_steps, "weights": cfg.embed.weights}
    rounds, previous, weights, stopped = [], None, cfg.embed.weights, None
    started = time.time()
    with stage_run(cfg, "bootstrap", params) as run:
        log_regions_input(regions, "selection")
        log_labelled_input(labelled, "selection")
        for r in range(cfg.select.rounds):
            here = out / f"round{r}"
            encoder = None
            with stage_run(cfg, "bootstrap-round", {"round": r}, f"bootstrap-round{r}"):
                if r > 0 or (weights is None and cfg.select.bootstrap):
                    source = "selected" if r > 0 else "filtered"
                    encoder = here / "encoder"
                    run_pretrain(round_config(cfg, source, None), encoder, regions=regions,
                                 selection=out / f"round{r - 1}" / "selection" if r > 0 else None,
                                 name=f"bootstrap-r{r}",  # + a digest of its inputs: resumes only the same
                                 storage=storage, overwrite=overwrite)
                    weights = str(encoder)
                rcfg = round_config(cfg, "filtered", Path(weights) if weights else None, encoder is not None)
                run_embed(rcfg, "regions", regions, here / "embeddings" / "regions", overwrite=overwrite)
                run_embed(rcfg, "labelled", labelled, here / "embeddings" / "labelled", overwrite=overwrite)
                run_select(rcfg, here / "embeddings" / "regions", here / "selection",
                           labelled_embeddings=here / "embeddings" / "labelled", regions=regions, overwrite=overwrite)
                rec, previous = round_record(r, here / "selection", previous, encoder, weights, truth, set(rare),
                                             cfg.run.seed)
                rounds.append(rec)
            if r + 1 < cfg.select.rounds and rec["selected"] < cfg.pretrain.batch_size:
                stopped = (f"round {r} kept {rec['selected']} regions, fewer than a batch (pretrain.batch_size="
                           f"{cfg.pretrain.batch_size}): no round {r + 1} can pretrain on them")
                log.warning("bootstrap stops: %s; its selection is the last (looser bounds, select.alpha or "
                            "select.bound_mode, keep more)", stopped)
                break
                log.info("bootstrap round %d: %d regions selected%s", r, rec["selected"],
                         "" if rec["jaccard_previous"] is None else f", Jaccard {rec['jaccard_previous']:.3f} with "
                         f"round {r - 1}")
        last = out / f"round{len(rounds) - 1}"
        record = {"rounds": rounds, "selection": str(last / "selection"), "embeddings": str(last / "embeddings"),
                  "weights": weights, "stopped": stopped, "seconds": round(time.time() - started, 1)}
        (out / "rounds.json").write_text(json.dumps(record, indent=2))
        log_results(out, {f"round{x['round']}_selected": x["selected"] for x in rounds}, ["rounds.json"])
    return StageResult("bootstrap", out, record, run.info.run_id, ("rounds.json",))


def format_rounds(record: dict) -> str:
    """rounds.json as a small text table."""
    scored = any(x.get("evidence") for x in record["rounds"])
    lines = ["round  selected  jaccard_prev" + ("  rare_share (random 95%)        distractor_share (random 95%)"
                                              if scored else "")]
    for x in record["rounds"]:
        ev, text = x.get("evidence"), ["", ""]
        if ev:
            rnd = ev["random"]
            text = [f"{_f(ev['rare_share_selected'])} ({_f(rnd['rare_share_p2_5'])}-{_f(rnd['rare_share_p97_5'])})",
                    f"{_f(ev['distractor_share_selected'])} ({_f(rnd['distractor_share_p2_5'])}-"
                    f"{_f(rnd['distractor_share_p97_5'])})"]
        lines.append(f"{x['round']:>5}  {x['selected']:>8}  {_f(x['jaccard_previous']):>12}" +
                     (f"  {text[0]:<30} {text[1]}" if scored else ""))
    if record.get("stopped"):
        lines.append(f"stopped early: {record['stopped']}")
    return "\n".join(lines)


def _f(v) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"
