"""A Ray Tune sweep as a Ray job: selection settings (scored by a probe) or filter settings (F1 vs boxes).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/sweep.py --space tune_spaces/selection.yaml --regions /shared/regions \
        --embeddings /shared/emb_regions --labelled-embeddings /shared/emb_labelled \
        --labelled /shared/labelled --out /shared/sweep_selection --storage /shared/ray_results \
        --work-dir /shared/activessf --set sweep.num_samples=32 --set sweep.pretrain_epochs=20

    ray job submit ... -- python jobs/sweep.py --space tune_spaces/filter.yaml \
        --input /shared/smears --boxes /shared/annotations --out /shared/sweep_filter

Every trial is an MLflow run under one parent; OUT/best.yaml is the best configuration.
Arguments are those of `activessf sweep`.
"""

import sys

import _bootstrap  # noqa: F401

from activessf.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
