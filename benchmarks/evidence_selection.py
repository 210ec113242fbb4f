"""Does active sample selection enrich rare subtypes and drop distractors? Synthetic smears and BCCD.

    .venv/bin/python benchmarks/evidence_selection.py [--fields 300] [--labelled 330] [--backbone resnet50]
        [--features random|supervised] [--skip-bccd] [--out benchmarks/results/evidence_selection.json]

For each dataset: filter regions, embed regions and the labelled set, fit
prototypes and select (the configured bound modes), then compare the rare
share among selected regions with the rare share among all filtered regions
(enrichment) and the distractor share before and after, against random
selection of the same size (1,000 seeded draws).

- synthetic: `activessf synth` fields; rare = CA-MK, HL-MK (the paper's);
  distractor = a region matching no megakaryocyte (IoU < 0.3).
- BCCD: labelled set = WBC crops of the images with one WBC box and a subtype
  label; pool = regions of the `wbc` preset; K = 5; rare = lymphocyte,
  monocyte, basophil; distractor = a region matching no WBC box.

``--features supervised`` first trains the backbone on the labelled set
(cross-entropy, a few epochs; see `activessf.features.supervised`) and embeds
with those weights: a *supervised* feature option, named as such.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

from activessf.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def chain(work: Path, smears: str, labelled: Path, boxes: Path, label: str, rare: set, cfg_over: list,
          modes: list[list[str]], image_labels=None, features: str = "random") -> dict:
    from activessf.stages.embed import run_embed
    from activessf.stages.filter import run_filter
    from activessf.stages.select import run_select
    from activessf.stages.select_eval import evaluate_selection

    cfg = load_config(overrides=cfg_over)
    t0 = time.time()
    run_filter(cfg, smears, work / "regions")
    if features == "supervised":
        from activessf.features.supervised import train_supervised

        weights = train_supervised(labelled, work / "features", cfg)
        cfg = load_config(overrides=cfg_over + [f"embed.weights={weights}"])
    run_embed(cfg, "regions", work / "regions", work / "emb_regions")
    run_embed(cfg, "labelled", labelled, work / "emb_labelled")
    out = {"features": features, "backbone": cfg.embed.backbone, "seconds_to_embeddings": round(time.time() - t0, 1),
           "modes": {}}
    for i, extra in enumerate(modes):
        mcfg = load_config(overrides=cfg_over + extra + ([f"embed.weights={cfg.embed.weights}"]
                                                         if cfg.embed.weights else []))
        report = run_select(mcfg, work / "emb_regions", work / f"sel{i}", labelled_embeddings=work / "emb_labelled")
        ev = evaluate_selection(work / f"sel{i}", work / "regions", boxes, label, rare, image_labels)
        out["modes"][" ".join(extra) or "paper defaults"] = {
            "clusters": [{k: r[k] for k in ("cluster", "n", "threshold", "candidates", "selected")}
                         for r in report["clusters"]],
            "evidence": ev,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fields", type=int, default=300)
    ap.add_argument("--labelled", type=int, default=330)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--features", choices=["random", "supervised"], default="random")
    ap.add_argument("--bccd", type=Path, default=REPO.parent / "shared" / "data" / "bccd")
    ap.add_argument("--skip-bccd", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import ray

    from activessf.config import SynthConfig
    from activessf.data import synth
    from activessf.data.annotations import write_labelled_crops
    from activessf.stages.select_eval import read_image_labels

    modes = [[], ["select.bound_mode=quantile"], ["select.alpha=1.0"], ["prototypes.mode=class_aware"]]
    ray.init(include_dashboard=False, log_to_driver=False)
    record = {"fields": args.fields, "labelled": args.labelled}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth.generate(SynthConfig(images=args.fields, labelled=args.labelled, seed=1), tmp / "syn", progress=False)
        record["synthetic"] = chain(tmp / "s", str(tmp / "syn" / "smears"), tmp / "syn" / "labelled",
                                    tmp / "syn", "megakaryocyte", {"CA-MK", "HL-MK"},
                                    [f"embed.backbone={args.backbone}"], modes, features=args.features)
        if not args.skip_bccd and (args.bccd / "JPEGImages").is_dir():
            labels = read_image_labels(args.bccd / "wbc_subtypes.csv")
            counts = write_labelled_crops(args.bccd / "JPEGImages", args.bccd / "Annotations", "WBC", labels,
                                          tmp / "bccd_labelled")
            record["bccd_labelled"] = counts
            record["bccd"] = chain(tmp / "b", str(args.bccd / "JPEGImages"), tmp / "bccd_labelled",
                                   args.bccd / "Annotations", "WBC", {"lymphocyte", "monocyte", "basophil"},
                                   [f"embed.backbone={args.backbone}", "prototypes.k=5", "filter.closing_kernel=35",
                                    "filter.min_box=65", "filter.fill_rate=0.35"], modes,
                                   image_labels=args.bccd / "wbc_subtypes.csv", features=args.features)
    ray.shutdown()
    name = f"evidence_selection_{args.features}"
    path = write(name, record, args.out)
    for data in ("synthetic", "bccd"):
        if data not in record:
            continue
        print(f"\n{data} ({record[data]['features']} {record[data]['backbone']} features)")
        for mode, r in record[data]["modes"].items():
            e = r["evidence"]
            rnd = e["random"]
            print(f"  {mode:32s} selected {e['selected']:4d}/{e['regions']:4d}  rare enrichment "
                  f"{e['rare_enrichment']} (random {rnd['rare_enrichment_mean']})  distractors "
                  f"{e['distractor_share_filtered']:.3f} -> {e['distractor_share_selected']} "
                  f"(random {rnd['distractor_share_mean']})")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
