"""The ActiveSSF demo as a Ray job (joins the cluster that runs it).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/demo.py --work-dir /shared/activessf-demo

Arguments are those of `activessf demo` (see `activessf demo --help`).
"""

import sys

import _bootstrap  # noqa: F401

from activessf.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
