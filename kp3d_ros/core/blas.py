"""How many threads numpy's BLAS (OpenBLAS, MKL, BLIS) may use in this process.

The pipeline's matrix products are small (per-patch moments, nearest-point distances): a second BLAS thread
cannot speed them up, but OpenBLAS's threads wake, spin and compete for the cores that ONNX Runtime, the DDS
threads and the node's worker need. Measured on this project's 2-core CPU with one other busy process: the
core pipeline took 72 ms per soak frame with 2 BLAS threads and 38 ms with 1 (commit be754a8; README, install notes).
The limit uses threadpoolctl (in requirements.txt); without it the library default stays and the reason says so.
"""

from __future__ import annotations


def limit_blas_threads(count: int) -> str:
    """Limit every loaded BLAS library to `count` threads (0: leave the default); what was done, for the log."""
    if count <= 0:
        return "BLAS threads: library default (cpu.blas_threads 0)"
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return (f"BLAS threads: library default, not limited to {count} (threadpoolctl is not installed; "
                f"`pip install threadpoolctl` or start with OPENBLAS_NUM_THREADS={count})")
    threadpool_limits(limits=count, user_api="blas")
    libraries = [f"{info['internal_api']} {info['num_threads']}" for info in threadpool_info()
                 if info.get("user_api") == "blas"]
    return f"BLAS threads: {', '.join(libraries) or 'no BLAS library loaded'}"
