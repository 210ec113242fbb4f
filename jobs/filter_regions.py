"""Stage 1 as a Ray job: cell region filtering of smear images on Ray Data.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/filter_regions.py --input /shared/smears --out /shared/regions \
        --work-dir /shared/activessf [--preset wbc] [--set filter.fill_rate=0.6] [--overwrite]

Arguments are those of `activessf filter` (see `activessf filter --help`);
inside a job the script joins the cluster that runs it (RAY_ADDRESS).
"""

import sys

import _bootstrap  # noqa: F401

from activessf.cli import main

if __name__ == "__main__":
    sys.exit(main(["filter", *sys.argv[1:]]))
