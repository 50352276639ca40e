"""One BLAS and OpenMP thread per process, unless the user chose otherwise.

The per-image stages run in parallel over worker processes. Threads that NumPy's
OpenBLAS (or MKL, or an OpenMP runtime) starts inside each process only compete with
those workers for the same cores, and idle OpenBLAS threads keep spinning. On 2 cores,
a Kvasir-SEG run with 2 workers took 1.7 times as long with OpenBLAS's default thread
count as with one thread (``bench/bench_pipeline.py``, steady state). The libraries read
these variables when they are loaded, so :func:`use_one_native_thread` must run before
NumPy is imported.
"""

from __future__ import annotations

import os

NATIVE_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def use_one_native_thread() -> None:
    """Set each of :data:`NATIVE_THREAD_VARIABLES` to 1 where the environment has no value."""
    for name in NATIVE_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
