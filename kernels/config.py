"""Compilation options shared by every kernel, in one place (see STYLE.md: stumpy's config).

``fastmath`` stays off: results must be bit-reproducible run to run and comparable to the
plain-numpy references in the tests. Vectorization comes from the loop structure instead
(the innermost loops run over samples, so no sum is ever reordered).
"""

JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")

# A layer goes through BLAS (np.dot on contiguous 2-D views) when the work of one matrix
# product, n_in * n_out * batch, reaches this many multiply-adds; below it, plain loops
# win because BLAS call overhead dominates.
BLAS_MIN_WORK = 32 * 32 * 64
# The weight gradient goes through BLAS from 1/BLAS_GRAD_FACTOR of that work, for layers
# of at least BLAS_GRAD_MIN_WEIGHTS weights (dense._use_blas_grad says why).
BLAS_GRAD_FACTOR = 16
BLAS_GRAD_MIN_WEIGHTS = 64
