"""Keep glibc from holding freed weight copies while layers load (peak RSS tracks what is kept).

Loading a layer makes short-lived copies of its matrices (a layer's tensors copied
out of the checkpoint's mapping, fused q/k/v and gate/up stacks, int8/int4 packing
temporaries), several MB each. glibc serves such blocks with their own mappings, but
its threshold for that grows to the largest block freed so far (up to 32 MiB), so
after the first layer the copies land on the heap and, once freed, stay in RSS:
measured on a bf16 node hosting the default model's 30 layers, a load peak 100 MiB
above the 206 MiB the layers keep (benchmarks/quantization_memory.py).

:func:`loading_heap` fixes the threshold at glibc's default (128 KiB) while layers
load, so every large copy is unmapped when freed, then puts it at the top of its
dynamic range (what a long-running process reaches anyway) and trims the heap.
Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Iterator

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
LOADING_THRESHOLD = 128 * 1024  # glibc's initial threshold
SERVING_THRESHOLD = 32 * 1024 * 1024  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc

_lock = threading.Lock()
_loads = 0


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018  (glibc only: musl and macOS lack them)
    except (OSError, AttributeError):
        # No C library to load, or not glibc: nothing to tune, the loaders work as they are.
        return None
    return libc


_LIBC = _libc()


def _set_threshold(threshold: int) -> None:
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, threshold)


@contextlib.contextmanager
def loading_heap() -> Iterator[None]:
    """Large blocks freed inside this context go back to the system at once (nested loads share it)."""
    global _loads
    with _lock:
        _loads += 1
        if _loads == 1:
            _set_threshold(LOADING_THRESHOLD)
    try:
        yield
    finally:
        with _lock:
            _loads -= 1
            if _loads == 0:
                _set_threshold(SERVING_THRESHOLD)
                if _LIBC is not None:
                    _LIBC.malloc_trim(0)
