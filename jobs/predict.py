"""Batch inference as a Ray job: every cell's subtype and each field's differential count, with overlays.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/predict.py --model models:/activessf-classifier@champion --input /shared/smears \
        --out /shared/predictions --work-dir /shared/activessf [--overlays all] [--overwrite]

Arguments are those of `activessf predict` (see `activessf predict --help`);
inside a job the script joins the cluster that runs it (RAY_ADDRESS).
"""

import sys

import _bootstrap  # noqa: F401

from activessf.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
