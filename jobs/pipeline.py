"""The whole method as one Ray job: filter, embed, select, pretrain, fine-tune (k folds + final fit), register.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env-json '{"py_modules": ["platform/activessf"]}' -- \
        python jobs/pipeline.py --smears /shared/smears --labelled /shared/labelled \
        --work-dir /shared/activessf --set pretrain.epochs=400

    # a small synthetic run (what the job test submits):
    ray job submit ... -- python jobs/pipeline.py --synthetic 12 --preset demo --work-dir /tmp/activessf-job

`py_modules` ships the library to every worker of the job; on a cluster whose setup
installed it (ray_cluster.yaml) it can be left out. Arguments are those of `activessf pipeline`.
"""

import sys

import _bootstrap  # noqa: F401

from activessf.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
