"""The paper's ablation (Table III) as a Ray job, with the report.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/ablation.py --labelled /shared/labelled --regions /shared/regions \
        --selection /shared/selection --fields /shared/smears --out /shared/ablation \
        --work-dir /shared/activessf [--methods mae,mocov3]

Arguments are those of `activessf ablation`.
"""

import sys

import _bootstrap  # noqa: F401

from activessf.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablation", *sys.argv[1:]]))
