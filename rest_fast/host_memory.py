"""Keep freed host memory in the process instead of handing it back to the OS every chunk.

A CPU chunk allocates and frees the same large buffers every time: the light decoder's output
alone is 19 MB a stream (24 frames x 256 x 256 x 3 floats), and the conversion to uint8 another.
glibc's malloc serves buffers that large with fresh ``mmap`` pages (or trims its heap when they
are freed), so the next chunk page-faults and zero-fills them again: about a third of the light
decoder's time on 2 cores (docs/training.md, "Less work per chunk"). PyTorch's CPU tuning guide
swaps in jemalloc or tcmalloc for this; with glibc the same effect is two ``mallopt`` settings:
serve buffers up to ``MMAP_THRESHOLD`` from the heap and keep up to ``TRIM_THRESHOLD`` of free
heap.

Memory stays bounded: a stream reuses the same buffers every chunk, so the heap stays at its
high-water mark (what the first chunks touched anyway) instead of shrinking and growing again
every chunk; at most ``TRIM_THRESHOLD`` of it is kept free. Process-wide, so
``StreamingGenerator`` applies it once for CPU models; ``REST_FAST_KEEP_FREED_MEMORY=0`` turns it
off (for example to compare, or where another allocator is preloaded).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc <malloc.h>
MMAP_THRESHOLD = 256 << 20      # above the largest per-chunk buffer of 12 streams (cpu preset)
TRIM_THRESHOLD = 512 << 20
ENV = "REST_FAST_KEEP_FREED_MEMORY"
log = logging.getLogger(__name__)


@functools.cache
def keep_freed_memory() -> bool:
    """Apply the two settings once per process; True when they are in force. False where the C
    library is not glibc (musl, macOS, Windows), or when ``REST_FAST_KEEP_FREED_MEMORY=0``."""
    if os.environ.get(ENV, "1") == "0":
        log.info("%s=0: freed host memory goes back to the OS as glibc decides", ENV)
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version   # only glibc has both
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; setting either also stops glibc adjusting them on its own.
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if ok:
        log.info("glibc malloc keeps freed buffers up to %d MiB (%s=0 turns this off)",
                 MMAP_THRESHOLD >> 20, ENV)
    return ok
