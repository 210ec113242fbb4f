"""Stage 2 as a Ray job: embed filtered regions or a labelled set with a timm backbone.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/embed.py --regions /shared/regions --out /shared/emb_regions \
        --work-dir /shared/activessf --set embed.weights=/shared/weights/resnet50.pt

    ray job submit ... -- python jobs/embed.py --labelled /shared/labelled --out /shared/emb_labelled ...

Arguments are those of `activessf embed`; on a cluster with GPUs the actor
pool runs one actor per GPU.
"""

import sys

import _bootstrap  # noqa: F401

from activessf.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
