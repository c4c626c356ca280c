"""Sparse inputs: scipy.sparse matrices and arrays as the kernels read them.

``MLP.fit``, ``predict``, ``loss`` and ``gradient`` take a CSR or CSC matrix (or any
scipy.sparse format, converted to CSR) wherever they take X.  Its rows go to the first
layer as they are (kernels/sparse.py): nothing of the size of the dense matrix is ever
made.  scipy is imported only when such an input arrives.
"""
import numpy as np

from ._validation import check_samples_shape
from .kernels import options as O


def is_sparse(X):
    """Whether X is a scipy.sparse matrix or array (scipy imported only if X may be)."""
    if not type(X).__module__.startswith("scipy.sparse"):
        return False
    import scipy.sparse
    return scipy.sparse.issparse(X)


class Rows:
    """Samples in CSR form as the kernels read them: each row's column indices
    increasing and distinct, int64 indices, values in the model dtype.  Behaves as the
    dense (n, n_in) array for what fastbp does with one: ``shape``, ``len``, selecting
    rows (``rows[a:b]``, ``rows[index_array]``), ``max_abs``."""

    __slots__ = ("indptr", "indices", "values", "shape")
    ndim = 2

    def __init__(self, indptr, indices, values, n_cols):
        self.indptr, self.indices, self.values = indptr, indices, values
        self.shape = (indptr.shape[0] - 1, int(n_cols))

    def __len__(self):
        return self.shape[0]

    @property
    def dtype(self):
        return self.values.dtype

    def __getitem__(self, rows):
        """The rows ``rows`` (a slice, or an array of row numbers), in that order."""
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.shape[0])
            if step == 1:
                lo, hi = self.indptr[start], self.indptr[max(stop, start)]
                return Rows(self.indptr[start:max(stop, start) + 1] - lo,
                            self.indices[lo:hi], self.values[lo:hi], self.shape[1])
            rows = np.arange(start, stop, step)
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (self.shape[0],):
                raise IndexError(f"a boolean mask of {rows.shape} for {self.shape[0]} rows")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < -self.shape[0] or rows.max() >= self.shape[0]):
            raise IndexError(f"row numbers in [{rows.min()}, {rows.max()}] for "
                             f"{self.shape[0]} rows")
        rows = np.where(rows < 0, rows + self.shape[0], rows)
        lengths = self.indptr[rows + 1] - self.indptr[rows]
        indptr = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        # each kept entry's place in the source: its row's start plus its rank in the row
        starts = np.repeat(self.indptr[rows] - indptr[:-1], lengths)
        take = starts + np.arange(indptr[-1], dtype=np.int64)
        return Rows(indptr, self.indices[take], self.values[take], self.shape[1])

    def max_abs(self):
        """max |x| over the matrix (0 where no entry is stored)."""
        v = self.values
        return float(max(np.max(v), -np.min(v), 0.0)) if v.size else 0.0

    def for_kernels(self, n_out, descend=False):
        """options.SparseRows with scratch for a first layer of n_out units
        (``descend``: for the plain step inside the backward pass)."""
        return O.sparse_rows(self.indptr, self.indices, self.values, self.shape[1], n_out,
                             descend)

    def fingerprint_arrays(self):
        """The arrays that say which data these are (checkpoint.data_fingerprint)."""
        return self.indptr, self.indices, self.values

    def toarray(self):
        """The dense (n, n_in) array (tests and small data only)."""
        out = np.zeros(self.shape, dtype=self.values.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        out[rows, self.indices] = self.values
        return out


def sparse_rows(X, n_features, dtype, name="X"):
    """A scipy.sparse X as Rows, validated (two dimensions, n_features columns, at least
    one row, real finite values).  The user's matrix is never written: a copy is made
    where its rows must be sorted or their duplicates summed, or its arrays converted."""
    check_samples_shape(X.shape, n_features, name)
    kind = X.dtype.kind
    if kind == "c":
        raise TypeError(f"{name} has complex values (dtype {X.dtype}); expected real numbers")
    if kind not in "biuf":
        raise TypeError(f"{name} has dtype {X.dtype}; expected a numeric sparse matrix")
    _check_before_conversion(X, name)  # scipy's conversions index by these numbers
    csr = X.tocsr()  # a new matrix unless X is CSR
    _check_structure(csr, name)
    if not csr.has_canonical_format:
        csr = csr.copy() if csr is X else csr
        csr.sum_duplicates()  # sorts each row's indices too
    with np.errstate(over="ignore"):
        values = csr.data.astype(dtype, copy=False)
    if values.size and not np.isfinite(values).all():
        if np.isfinite(csr.data).all():
            raise ValueError(f"{name} has values too large for {np.dtype(dtype).name} "
                             f"(max |value| {np.abs(csr.data).max():.3g})")
        raise ValueError(f"{name} contains NaN or infinity")
    # writable arrays, copied where the user's are read-only (a memory map, a frozen
    # array): the kernels are compiled for writable ones (never written), and a
    # read-only array would compile them again, seconds for a copy of milliseconds
    return Rows(np.require(csr.indptr, np.int64, ["C", "W"]),
                np.require(csr.indices, np.int64, ["C", "W"]),
                np.require(values, None, ["C", "W"]), n_features)


def rows_of_dense(a):
    """Rows holding the nonzero values of a dense (n, n_in) array, row by row."""
    mask = a != 0
    indptr = np.zeros(a.shape[0] + 1, dtype=np.int64)
    np.cumsum(mask.sum(axis=1), out=indptr[1:])
    indices = np.nonzero(mask)[1].astype(np.int64)
    return Rows(indptr, indices, np.ascontiguousarray(a[mask]), a.shape[1])


def like(xv, x):
    """Validation inputs xv in the form of the training inputs x (dense or Rows), so that
    one compiled entry reads both."""
    if isinstance(x, Rows) and not isinstance(xv, Rows):
        return rows_of_dense(xv)
    if isinstance(xv, Rows) and not isinstance(x, Rows):
        return np.require(xv.toarray(), requirements=["C", "A", "W"])
    return xv


def _check_structure(csr, name):
    """ValueError unless csr's index arrays describe its shape: scipy builds a matrix from
    arrays without checking them, and the kernels index the weights by these numbers."""
    _check_compressed(csr.indptr, csr.indices, csr.data.shape[:1], *csr.shape, name,
                      "row pointers (indptr)", "rows", "column indices")


def _check_before_conversion(X, name):
    """ValueError unless the index arrays of a CSC, BSR or COO X describe its shape.
    scipy's tocsr() of these formats writes and reads through those numbers unchecked
    (C++): a row index past the end corrupts memory or crashes the process, and scipy
    builds a matrix from arrays (or lets them be changed afterwards) without checking
    them.  A CSR X is checked after (its tocsr() is X itself); the others' conversions
    are NumPy's, which checks its indexing."""
    fmt = getattr(X, "format", None)
    n_rows, n_cols = X.shape
    if fmt == "csc":
        _check_compressed(X.indptr, X.indices, X.data.shape[:1], n_cols, n_rows, name,
                          "column pointers (indptr)", "columns", "row indices")
    elif fmt == "bsr":
        r, c = X.blocksize
        _check_compressed(X.indptr, X.indices, X.data.shape[:1], n_rows // r, n_cols // c,
                          name, "block-row pointers (indptr)", "block rows",
                          "block-column indices")
    elif fmt == "coo":
        coords = X.coords if hasattr(X, "coords") else (X.row, X.col)
        for axis, (idx, size) in enumerate(zip(coords, X.shape)):
            if idx.shape != X.data.shape:
                raise ValueError(f"{name} is a malformed sparse matrix: {idx.shape[0]} "
                                 f"coordinates for {X.data.shape[0]} values")
            if idx.size and (idx.min() < 0 or idx.max() >= size):
                what = ("row", "column")[axis]
                raise ValueError(f"{name} is a malformed sparse matrix: {what} indices in "
                                 f"[{idx.min()}, {idx.max()}], outside [0, {size - 1}]")


def _check_compressed(indptr, indices, data_len, n_major, n_minor, name, pointers, majors,
                      minors):
    """ValueError unless a compressed format's arrays (CSR, CSC, BSR) describe n_major
    rows (columns, block rows) of entries whose indices lie in [0, n_minor)."""
    if indptr.shape != (n_major + 1,) or indptr[0] != 0 or \
            indptr[-1] != indices.shape[0] or np.any(np.diff(indptr) < 0) or \
            data_len != indices.shape:
        raise ValueError(f"{name} is a malformed sparse matrix: its {pointers} do not "
                         f"describe {n_major} {majors} of its {indices.shape[0]} entries")
    if indices.size and (indices.min() < 0 or indices.max() >= n_minor):
        raise ValueError(f"{name} is a malformed sparse matrix: {minors} in "
                         f"[{indices.min()}, {indices.max()}], outside [0, {n_minor - 1}]")


def for_kernels(x, n_out, descend=False):
    """The inputs as options.Data takes them: a dense array as it is, Rows as
    options.SparseRows (see Rows.for_kernels)."""
    return x.for_kernels(n_out, descend) if isinstance(x, Rows) else x


def max_abs(x):
    """max |x| of dense or sparse inputs."""
    if isinstance(x, Rows):
        return x.max_abs()
    return float(max(np.max(x), -np.min(x))) if x.size else 0.0
