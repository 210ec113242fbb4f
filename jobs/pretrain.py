"""Stage 4 as a Ray job: self-supervised pretraining on Ray Train (DDP; nccl on GPUs, gloo on CPUs).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/pretrain.py --regions /shared/regions --selection /shared/selection \
        --out /shared/encoder_mae --name mae-selected --storage /shared/ray_results \
        --work-dir /shared/activessf --set pretrain.method=mae --set pretrain.num_workers=4

Rerunning with the same --name (and --storage) resumes from the last checkpoint.
Arguments are those of `activessf pretrain`.
"""

import sys

import _bootstrap  # noqa: F401

from activessf.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
