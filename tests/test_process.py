"""Process settings for image work (activessf.process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Hold blocks of 1-9 MB at once and free them, 40 times (filtering a field allocates and frees arrays
# of these sizes); print the minor page faults per round.
ROUNDS = """
import resource, sys
import numpy as np
if sys.argv[1] == "kept":
    from activessf.process import keep_freed_memory
    assert keep_freed_memory()
def image():
    held = [np.ones(mb << 20, np.uint8) for mb in (6, 3, 9, 1, 4)]
    del held
image()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    image()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 40)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
def test_freed_image_memory_is_reused_instead_of_faulted_in_again():
    """Without the setting glibc hands the freed 23 MB back and the next round faults it in again (about
    2,800 faults of 4 KB pages a round); with it, the process reuses its freed memory."""
    faults = {mode: float(subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True,
                                         check=True).stdout) for mode in ("default", "kept")}
    assert faults["default"] > 1000 and faults["kept"] < 10, faults
