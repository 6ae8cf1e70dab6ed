from benchmarks.machine import numpy_openblas, openblas_kernels_pinned

with openblas_kernels_pinned(numpy_openblas()) as numpy_blas:  # numpy's OpenBLAS reads its kernels once, here
    import numpy  # noqa: F401

from .run import main  # noqa: E402

main(numpy_blas=numpy_blas)
