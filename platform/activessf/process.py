"""Settings for a process that does image work on one core (a Ray task or actor of the data stages).

Decoding, blurring and clustering a field allocates and frees several megabytes per image. glibc serves
blocks above its mmap threshold with fresh pages from the kernel and returns them on free, so every
image pays again for zeroed pages: about 1,240 minor page faults per BCCD field (640 x 480), half of the
filter's time on the 2-core test machine (6.7 ms an image, 3.4-4.0 ms without them; docs/benchmarks.md).
:func:`image_worker` keeps such blocks in the process instead.
"""

from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit: blocks up to 32 MB come from the heap
TRIM_THRESHOLD = 128 << 20  # free memory at the top of the heap kept up to this size

_allocator_set: bool | None = None


def keep_freed_memory() -> bool:
    """Have glibc's allocator keep freed memory for reuse instead of handing it back to the kernel after
    every image (mmap threshold 32 MB, trim threshold 128 MB: a process keeps at most about 128 MB more
    than it uses). Once per process; returns whether the settings apply (False off glibc)."""
    global _allocator_set
    if _allocator_set is None:
        _allocator_set = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                return False
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            _allocator_set = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _allocator_set


def image_worker() -> None:
    """One core's image work: OpenCV on one thread (Ray runs the tasks side by side) and freed memory
    kept for the next image (:func:`keep_freed_memory`)."""
    import cv2

    cv2.setNumThreads(1)
    keep_freed_memory()
