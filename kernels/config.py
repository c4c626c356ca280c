"""Compilation options shared by every kernel, in one place (see STYLE.md: stumpy's config).

``fastmath`` stays off: results must be bit-reproducible run to run and comparable to the
plain-numpy references in the tests. Vectorization comes from the loop structure instead
(the innermost loops run over samples, so no sum is ever reordered).
"""

JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")
# Functions only ever called from other kernels: no CPython wrapper (the code that boxes
# and unboxes their arguments for Python callers), which is most of what Numba generates
# and compiles for a small function.
INNER = dict(JIT, no_cpython_wrapper=True)

# A layer's products (forward, weight gradient, back-propagation) go through the
# matrix products (batch._matmul: the gemm unit of gemm.py, or BLAS) when the layer
# has at least PRODUCT_MIN_WEIGHTS weights and one product, n_in * n_out * batch, at
# least PRODUCT_MIN_WORK multiply-adds.  Smaller layers keep the plain loops: there the
# tiles' edges and call overhead cost more than they save, and such layers are those of
# the generated kernels (generate.py), which repeat the loops' order exactly.  The
# threshold is the one W4b (batch 64) ran fastest with at H = 16 and 64.
PRODUCT_MIN_WORK = 16 * 16 * 16
PRODUCT_MIN_WEIGHTS = 64
# A product of at least this many multiply-adds goes to BLAS instead of the tiles when
# BLAS runs on at least BLAS_MIN_THREADS threads, which then share it.  One thread of
# tiles runs the products of a batch of 64 at least as fast as one of OpenBLAS, but four
# OpenBLAS threads beat one of tiles on a 64 x 256 x 256 layer (two threads do not, by
# enough to pay for their synchronization), measured on a 16-core Xeon.
BLAS_THREADED_MIN_WORK = 1 << 22
BLAS_MIN_THREADS = 4
