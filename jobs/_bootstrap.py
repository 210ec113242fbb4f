"""Make ``activessf`` importable in a ``ray job submit --working-dir .`` job.

On a cluster where the package is installed (see ray_cluster.yaml) this does
nothing; otherwise the library travels inside the working directory and is
found under ``platform/``.
"""

import sys
from pathlib import Path

try:
    import activessf  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
