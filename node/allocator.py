"""glibc malloc tuning for a long-running daemon that churns medium-sized numpy buffers.

Why: the soak (``bench/soak.py``) showed RSS rising ~16 % in 3 minutes while the Python
heap traced by tracemalloc grew by under 1 MiB: the growth was the C allocator, not live
objects. glibc serves a request above ``M_MMAP_THRESHOLD`` (128 KiB) with its own mmap,
returned to the OS on free -- but after the first such free it *raises* the threshold to
that size (up to 32 MiB), so from then on every 256 KiB operand, share and result is carved
from the heap arenas (one per executor thread, up to 8x cores), where interleaved lifetimes
fragment them and freed space is rarely handed back. Fixing the threshold (setting it
explicitly turns the dynamic adjustment off) keeps those buffers on mmap, so their pages
go back to the OS when numpy frees them; capping arenas bounds the per-thread heaps.
Everything here is a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from dataclasses import dataclass

log = logging.getLogger("sedma.allocator")

M_TRIM_THRESHOLD = -1   # mallopt parameter numbers from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 128 * 1024   # glibc's default value, now fixed instead of sliding to 32 MiB
ARENA_MAX = 2                 # loop thread + executor threads share two heaps


@dataclass(frozen=True)
class AllocatorSettings:
    mmap_threshold: int = MMAP_THRESHOLD
    arena_max: int = ARENA_MAX


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.mallopt  # noqa: B018 -- glibc only; musl and macOS lack it
        return lib
    except (OSError, AttributeError):
        return None


def tune(settings: AllocatorSettings = AllocatorSettings()) -> bool:
    """Apply ``settings`` with mallopt; True if glibc accepted them all.

    Call at start-up, before the executor threads exist (arenas are made per thread).
    ``SEDMA_MALLOC_TUNE=0`` leaves glibc's defaults (for A/B runs of ``bench/soak.py``).
    """
    if os.environ.get("SEDMA_MALLOC_TUNE") == "0":
        log.info("SEDMA_MALLOC_TUNE=0: allocator left at glibc's defaults")
        return False
    lib = _libc()
    if lib is None:
        log.info("not glibc: allocator left at its defaults")
        return False
    ok = all(lib.mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, settings.mmap_threshold), (M_ARENA_MAX, settings.arena_max)))
    if not ok:
        log.warning("mallopt refused the allocator settings %s", settings)
    return ok


def trim() -> bool:
    """Return free heap pages to the OS (glibc ``malloc_trim(0)``); False if none or not glibc."""
    lib = _libc()
    return bool(lib is not None and lib.malloc_trim(0))
