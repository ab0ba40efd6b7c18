"""Settings for torch's native thread pools, applied in one place before torch first loads.

OpenMP and MKL read these variables once, when the library loads, so every way
of starting a node (``language-pipes -c FILE run`` and the terminal interface)
calls :func:`prepare_native_threads` before importing torch. A variable the
user set already is left alone, except the thread counts of ``run``, which
follow ``torch_threads``.
"""

from __future__ import annotations

import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Idle OpenMP threads spinning between kernels starve the node's event loop and network threads
# (measured: 3 tok/s instead of 40 with two torch threads); they sleep unless the user chose otherwise,
# after a short spin that keeps them hot between the kernels of one step (benchmarks/README.md).
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "8000"}


def prepare_native_threads(threads: int | None = None, *, override_threads: bool = False) -> None:
    """Set the OpenMP wait policy and, when ``threads`` is given, the native pools' sizes."""
    if threads is not None:
        for variable in THREAD_VARIABLES:
            if override_threads:
                os.environ[variable] = str(threads)
            else:
                os.environ.setdefault(variable, str(threads))
    for variable, value in OPENMP_DEFAULTS.items():
        os.environ.setdefault(variable, value)
