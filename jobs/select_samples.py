"""Stage 3 as a Ray job: prototypes in a store actor, then selection of every region.

Fit prototypes on labelled embeddings and select, in one job:

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/select_samples.py --embeddings /shared/emb_regions --labelled /shared/emb_labelled \
        --regions /shared/regions --out /shared/selection --work-dir /shared/activessf

or reuse an existing prototype snapshot (e.g. with new bounds, no refit):

    ray job submit ... -- python jobs/select_samples.py --embeddings /shared/emb_regions \
        --prototypes /shared/selection/prototypes.npz --out /shared/selection_alpha1 --set select.alpha=1

Arguments are those of `activessf select`.
"""

import sys

import _bootstrap  # noqa: F401

from activessf.cli import main

if __name__ == "__main__":
    sys.exit(main(["select", *sys.argv[1:]]))
