"""Stage 5 as a Ray job: stratified k-fold fine-tuning (folds as parallel Ray Train runs).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/finetune.py --labelled /shared/labelled --init /shared/encoder_mae \
        --out /shared/finetune_mae --work-dir /shared/activessf [--folds /shared/finetune_vit/folds.json]

Arguments are those of `activessf finetune`.
"""

import sys

import _bootstrap  # noqa: F401

from activessf.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
