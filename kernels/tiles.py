"""Matrix products of the wide layers in register tiles: fastbp's own gemm.

``tile_gemm`` has the CBLAS gemm contract of gemm.py's units (row-major, c <- alpha * op(a) @
op(b) + beta * c) and computes it with a register-tiled loop written as LLVM vector IR:
a tile of ROWS rows by VECS vectors of c stays in vector registers while the sum runs
over k; each step broadcasts ROWS values of op(a) and loads VECS vectors of a row of
op(b), then does ROWS * VECS fused multiply-adds.

``transpose_block`` moves a block of one vector's width through registers as its
transpose: the tiles pack op(b)'s columns with it for trans_b, and batch.gather lays a
batch's samples out as unit rows with it.

Why not BLAS for these products: the layers of a small network are small
matrices -- 64 samples by 16 to 1024 units -- where BLAS spends much of its time
packing panels and picking kernels, and the OpenBLAS a wheel bundles may run an older
kernel than the CPU has (here OPENBLAS_CORETYPE=Haswell: 256-bit vectors on an AVX-512
machine).  One thread, batch 64, the tiles run these products at about twice the
speed of that OpenBLAS (asv_benchmarks: Width, compare.py W4b).

The order of every sum is fixed: c[i, j] is the fused multiply-add chain over p = 0,
1, ..., k - 1 starting from 0, then alpha * sum (+ beta * c[i, j] when beta != 0).  It
does not depend on the tile sizes, on where a tile falls or on the CPU: every element
is the same scalar recurrence, so results are the same on every machine and for every
blocking (the tests check this against a scalar loop).  With beta == 0, c is only
written: NaN in it does not propagate.

The tile size follows the CPU's vector registers: with AVX-512 (32 registers of 64
bytes) 6 rows x 4 vectors (24 accumulators); otherwise 32-byte vectors, 6 rows x 2
vectors (12 of the 16 registers).  Not 4 x 3, the same 12 accumulators: a batch of 64
samples (W4b's) is 2 x 24 float32 columns and a 16-column rest that ran as two
one-vector tiles, 4 chains each, waiting on their fused multiply-adds' latency; in
tiles 16 wide it is four whole tiles (float64: eight of 8).  Zen 3, one CPU: W4b's
epoch (batch 64) float32 0.52-0.54 -> 0.38-0.49 s at H = 1024, 0.031-0.034 -> 0.026
s at H = 256; float64 1.19-1.29 -> 0.99-1.13 s and 0.062-0.068 -> 0.058-0.059 s.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .config import INNER, JIT, VECTOR_BYTES, refuse_python_calls
from .intrinsics import address, compiled_as, fma, hold
from numba.np.numpy_support import as_dtype

FLOATS = (types.float64, types.float32)


def is_float_pointer(t):
    return isinstance(t, types.CPointer) and t.dtype in FLOATS


def is_float_operand(t):
    """A 1-D float array or a typed pointer to floats: what the products accept."""
    return (isinstance(t, types.Array) and t.ndim == 1 and t.dtype in FLOATS) or \
        is_float_pointer(t)


def scratch(like, n):
    """A new 1-D array of n elements of the dtype ``like`` (an array or a pointer)
    points to (compiled code only)."""
    raise NotImplementedError("compiled code only")


@overload(scratch)
def _scratch(like, n):
    if not is_float_operand(like):
        return None
    dtype = as_dtype(like.dtype)
    return lambda like, n: np.empty(n, dtype)


ROWS, VECS = (6, 4) if VECTOR_BYTES == 64 else (6, 2)
# the row counts a tile can have: a block's last rows are cut into these (5 = 3 + 1 + 1)
ROW_COUNTS = (ROWS, ROWS // 2, 1)
# _panel runs row blocks outermost while op(b) is at most this large (it then stays in a
# 1 MB L2, as on the development machine), column panels outermost beyond (batch 256,
# 1024 x 1024 is faster this way round).
ROWS_OUTER_MAX_BYTES = 512 * 1024

_LLVM_FLOAT = {types.float64: (ir.DoubleType, "f64"), types.float32: (ir.FloatType, "f32")}


def lanes(dtype):
    """Elements of ``dtype`` (float64 / float32: a Numba type or a numpy dtype) per
    vector."""
    bits = getattr(dtype, "bitwidth", None) or np.dtype(dtype).itemsize * 8
    return VECTOR_BYTES * 8 // bits


def _splat(builder, value, vec):
    i32 = ir.IntType(32)
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(i32, 0))
    return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, vec.count), [0] * vec.count))


class _Vectors:
    """What the emitted loops share for ``dtype`` (a Numba float type): ``vec`` (its
    vector type), ``width`` (lanes), ``zero``, ``fma(x, y, acc)``, and ``load(ptr, v)`` /
    ``store(value, ptr, v)`` of vector v of ``vecs`` at a vector pointer -- the last one
    masked to its first ``tail`` lanes when tail (an int64 value, 1 .. lanes) is given,
    so that nothing past them is read or written."""

    def __init__(self, builder, dtype, vecs, tail=None):
        i64, i32 = ir.IntType(64), ir.IntType(32)
        make, suffix = _LLVM_FLOAT[dtype]
        self.builder, self.vecs = builder, vecs
        self.width = width = lanes(dtype)
        self.vec = vec = ir.VectorType(make(), width)
        self._fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{width}{suffix}")
        self._align = ir.Constant(i32, dtype.bitwidth // 8)
        self.zero = ir.Constant(vec, None)
        self._mask = None
        if tail is not None:
            lane_ids = ir.Constant(ir.VectorType(i64, width), list(range(width)))
            self._mask = builder.icmp_unsigned("<", lane_ids, _splat(
                builder, tail, ir.VectorType(i64, width)))
            bool_vec = ir.VectorType(ir.IntType(1), width)
            self._masked_load = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec.as_pointer(), i32, bool_vec, vec]),
                f"llvm.masked.load.v{width}{suffix}.p0")
            self._masked_store = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), i32,
                                                                bool_vec]),
                f"llvm.masked.store.v{width}{suffix}.p0")

    def at(self, base, v):
        """Vector v from the scalar pointer base."""
        return self.builder.bitcast(
            self.builder.gep(base, [ir.Constant(ir.IntType(64), v * self.width)]),
            self.vec.as_pointer())

    def fma(self, x, y, acc):
        return self.builder.call(self._fma, [x, y, acc])

    def load(self, ptr, v):
        if self._mask is not None and v == self.vecs - 1:
            return self.builder.call(self._masked_load, [ptr, self._align, self._mask,
                                                         self.zero])
        return self.builder.load(ptr, align=self._align.constant)

    def store(self, value, ptr, v):
        if self._mask is not None and v == self.vecs - 1:
            self.builder.call(self._masked_store, [value, ptr, self._align, self._mask])
        else:
            self.builder.store(value, ptr, align=self._align.constant)


def _emit_tile(context, builder, dtype, rows, vecs, a_base, a_si, a_sp, b_base, ldb,
               c_base, ldc, k, alpha, beta, cont, tail=None):
    """The loop of one rows x vecs tile: c (rows, vecs * lanes) <- alpha * sum_p
    a(i, p) b(p, :) (+ beta * c).  Pointers and int64 strides, all in elements.

    cont (an i1 value): the sums start from c's values instead of 0, going on with a
    chain an earlier call over the first steps left in c (with alpha 1 and beta 0,
    c holds the chain's value exactly); a select, so c's old values enter no sum
    otherwise.  tail (an int64 value, 1 .. lanes, or None): the last vector holds only
    that many columns; its loads and stores are masked, so nothing past them is read or
    written."""
    i64 = ir.IntType(64)
    ops = _Vectors(builder, dtype, vecs, tail)
    vec, zero, load, store = ops.vec, ops.zero, ops.load, ops.store
    acc = []
    for r in range(rows):
        c_row = builder.gep(c_base, [builder.mul(ir.Constant(i64, r), ldc)])
        acc.append([cgutils.alloca_once_value(
            builder, builder.select(cont, load(ops.at(c_row, v), v), zero))
            for v in range(vecs)])
    a_rows = [builder.mul(ir.Constant(i64, r), a_si) for r in range(rows)]
    with cgutils.for_range(builder, k) as loop:
        p = loop.index
        b_row = builder.gep(b_base, [builder.mul(p, ldb)])
        bv = [load(ops.at(b_row, v), v) for v in range(vecs)]
        a_col = builder.gep(a_base, [builder.mul(p, a_sp)])
        for r in range(rows):
            av = _splat(builder, builder.load(builder.gep(a_col, [a_rows[r]])), vec)
            for v in range(vecs):
                builder.store(ops.fma(av, bv[v], builder.load(acc[r][v])), acc[r][v])
    alpha_v, beta_v = _splat(builder, alpha, vec), _splat(builder, beta, vec)
    beta_zero = builder.fcmp_ordered("==", beta, ir.Constant(vec.element, 0.0))
    for r in range(rows):
        c_row = builder.gep(c_base, [builder.mul(ir.Constant(i64, r), ldc)])
        for v in range(vecs):
            ptr = ops.at(c_row, v)
            scaled = builder.fmul(alpha_v, builder.load(acc[r][v]))
            with_c = builder.fadd(scaled, builder.fmul(beta_v, load(ptr, v)))
            store(builder.select(beta_zero, scaled, with_c), ptr, v)


@intrinsic
def _tile(typingctx, rows, wide, tail, a, ao, a_si, a_sp, b, bo, ldb, c, co, ldc, k, alpha,
          beta, cont):
    """One tile of ``rows`` (one of ROW_COUNTS) rows: VECS full vectors when ``wide``, else one
    vector holding its first ``tail`` columns (all of them when tail == 0), its loads
    and stores masked; see _emit_tile.  a(i, p) = a[ao + i * a_si + p * a_sp]; b(p, j) =
    b[bo + p * ldb + j]; c(i, j) = c[co + i * ldc + j]; cont: the sums go on from c's
    values (_emit_tile).  a, b, c: pointers (intrinsics.address) to one float dtype; no
    bounds checks.

    Few shapes, not every rows x vectors: each is an unrolled loop, and Numba optimizes
    the tiles again in every kernel that calls them (a first fit compiles a dozen):
    24 x 2 shapes took four times as long to compile as these 6 x 2.)"""
    arrays = (a, b, c)
    ints = (rows, tail, ao, a_si, a_sp, bo, ldb, co, ldc, k)
    if not (all(is_float_pointer(t) for t in arrays) and len({t.dtype for t in arrays}) == 1
            and all(isinstance(t, types.Integer) for t in ints)
            and isinstance(wide, types.Boolean) and isinstance(cont, types.Boolean)
            and all(isinstance(t, types.Float) for t in (alpha, beta))):
        return None
    dtype = c.dtype
    sig = types.void(rows, wide, tail, a, ao, a_si, a_sp, b, bo, ldb, c, co, ldc, k, alpha,
                     beta, cont)

    def codegen(context, builder, signature, args):
        def int64(i):
            return context.cast(builder, args[i], signature.args[i], types.int64)

        def at(i, offset):
            return builder.gep(args[i], [int64(offset)])

        i64 = ir.IntType(64)
        rows_, tail_ = int64(0), int64(2)
        width = ir.Constant(i64, lanes(dtype))
        count = builder.select(builder.icmp_signed(">", tail_, ir.Constant(i64, 0)), tail_,
                               width)
        common = dict(a_base=at(3, 4), a_si=int64(5), a_sp=int64(6), b_base=at(7, 8),
                      ldb=int64(9), c_base=at(10, 11), ldc=int64(12), k=int64(13),
                      alpha=context.cast(builder, args[14], signature.args[14], dtype),
                      beta=context.cast(builder, args[15], signature.args[15], dtype),
                      cont=args[16])
        for r in ROW_COUNTS:
            with builder.if_then(builder.icmp_signed("==", rows_, ir.Constant(i64, r))):
                with builder.if_else(args[1]) as (full, narrow):
                    with full:
                        _emit_tile(context, builder, dtype, r, VECS, **common)
                    with narrow:
                        _emit_tile(context, builder, dtype, r, 1, tail=count, **common)
        return context.get_dummy_value()

    return sig, codegen


# -------------------------------------------------------------- one row: a layer's units
# vectors of one row of c kept in registers while row_product runs over k: 8 chains of
# four-cycle fused multiply-adds keep two FMA units busy (with 16 registers, 6)
ROW_VECS = 2 * VECS


def row_product(a, ao, b, bo, ldb, c, co, k, n):
    """c[co + j] <- sum_p a[ao + p] * b[bo + p * ldb + j] for j < n (k >= 1): one row of a
    product, a per-sample layer's pre-activations (sample_units.forward_units): each
    element the product of the first terms, then the fused multiply-add chain over p =
    1 .. k - 1 in order.  a, b, c: 1-D C-contiguous arrays of one float dtype (a and c
    may be one array; the a and c ranges must not overlap); offsets in elements.

    Compiled, ROW_VECS vectors of c at a time stay in registers for the whole chain and
    are stored once; the last columns go a vector at a time, the last one masked.  The
    same operations in the same order for each element: the same bits as this loop."""
    a0 = a[ao]
    for j in range(n):
        c[co + j] = b[bo + j] * a0
    for p in range(1, k):
        ap = a[ao + p]
        row = bo + p * ldb
        for j in range(n):
            c[co + j] = fma(b[row + j], ap, c[co + j])


def _emit_row(context, builder, dtype, vecs, a_base, b_base, ldb, c_base, k, tail=None):
    """row_product's code for ``vecs`` vectors of c from c_base (pointers; ldb, k int64
    values); tail (an int64 value, 1 .. lanes, or None): the last vector holds only that
    many columns, its loads and store masked."""
    i64 = ir.IntType(64)
    ops = _Vectors(builder, dtype, vecs, tail)
    vec = ops.vec

    def load(base, v):
        return ops.load(ops.at(base, v), v)

    first = _splat(builder, builder.load(a_base), vec)
    acc = [cgutils.alloca_once_value(builder, builder.fmul(load(b_base, v), first))
           for v in range(vecs)]
    with cgutils.for_range(builder, builder.sub(k, ir.Constant(i64, 1))) as loop:
        p = builder.add(loop.index, ir.Constant(i64, 1))
        ap = _splat(builder, builder.load(builder.gep(a_base, [p])), vec)
        row = builder.gep(b_base, [builder.mul(p, ldb)])
        for v in range(vecs):
            builder.store(ops.fma(load(row, v), ap, builder.load(acc[v])), acc[v])
    for v in range(vecs):
        ops.store(builder.load(acc[v]), ops.at(c_base, v), v)


@compiled_as(row_product)
def _row_product(typingctx, a, ao, b, bo, ldb, c, co, k, n):
    ints = (ao, bo, ldb, co, k, n)
    if not (all(_is_float_data(t) for t in (a, b, c)) and len({a.dtype, b.dtype, c.dtype}) == 1
            and all(isinstance(t, types.Integer) for t in ints)):
        return None
    dtype = c.dtype
    sig = types.void(a, ao, b, bo, ldb, c, co, k, n)

    def codegen(context, builder, signature, args):
        def int64(i):
            return context.cast(builder, args[i], signature.args[i], types.int64)

        def base(i, offset):
            return builder.gep(_data_pointer(context, builder, signature.args[i], args[i]),
                               [int64(offset)])

        i64 = ir.IntType(64)
        width = lanes(dtype)
        a_base, b_base, c_base = base(0, 1), base(2, 3), base(5, 6)
        ldb, k, n = int64(4), int64(7), int64(8)
        block = ir.Constant(i64, ROW_VECS * width)
        blocks = builder.udiv(n, block)
        with cgutils.for_range(builder, blocks) as loop:
            j = builder.mul(loop.index, block)
            _emit_row(context, builder, dtype, ROW_VECS, a_base, builder.gep(b_base, [j]),
                      ldb, builder.gep(c_base, [j]), k)
        done = builder.mul(blocks, block)
        lanes_ = ir.Constant(i64, width)
        rest = builder.udiv(builder.add(builder.sub(n, done),
                                        ir.Constant(i64, width - 1)), lanes_)
        with cgutils.for_range(builder, rest) as loop:
            j = builder.add(done, builder.mul(loop.index, lanes_))
            left = builder.sub(n, j)
            tail = builder.select(builder.icmp_signed("<", left, lanes_), left, lanes_)
            _emit_row(context, builder, dtype, 1, a_base, builder.gep(b_base, [j]), ldb,
                      builder.gep(c_base, [j]), k, tail=tail)
        return context.get_dummy_value()

    return sig, codegen


def lanes_of(c):
    """Elements of c's dtype per vector (c a float array)."""
    return lanes(c.dtype)


@compiled_as(lanes_of)
def _lanes_of(typingctx, c):
    """Elements of c's dtype (c a float array or pointer) per vector: a constant."""
    if not is_float_operand(c):
        return None
    width = lanes(c.dtype)

    def codegen(context, builder, signature, args):
        return context.get_constant(types.intp, width)

    return types.intp(c), codegen


def like_of(c, x):
    """x in the dtype of c (a float array or pointer; compiled code only)."""
    raise NotImplementedError("compiled code only")


@compiled_as(like_of)
def _like(typingctx, c, x):
    """x converted to the dtype of c (a float array or pointer)."""
    if not (is_float_operand(c) and isinstance(x, (types.Float, types.Integer))):
        return None

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[1], signature.args[1], c.dtype)

    return c.dtype(c, x), codegen


@njit(**INNER)
def _row_block(a, ao, a_si, a_sp, b, bo, ldb, c, co, ldc, rows, j0, j1, k, alpha, beta,
               width, cont):
    """Columns j0 .. j1 - 1 of ``rows`` (1..ROWS) rows, cut into blocks of ROW_COUNTS."""
    i = 0
    while i < rows:
        r = ROWS if rows - i >= ROWS else (ROWS // 2 if rows - i >= ROWS // 2 else 1)
        _rows_of_tiles(a, ao + i * a_si, a_si, a_sp, b, bo, ldb, c, co + i * ldc, ldc, r, j0,
                       j1, k, alpha, beta, width, cont)
        i += r


@njit(**INNER)
def _rows_of_tiles(a, ao, a_si, a_sp, b, bo, ldb, c, co, ldc, rows, j0, j1, k, alpha, beta,
                   width, cont):
    """Columns j0 .. j1 - 1 of ``rows`` (one of ROW_COUNTS) rows: tiles of VECS vectors,
    then one vector at a time, the last masked."""
    step = VECS * width
    j = j0
    while j + step <= j1:
        _tile(rows, True, 0, a, ao, a_si, a_sp, b, bo + j, ldb, c, co + j, ldc, k, alpha,
              beta, cont)
        j += step
    while j < j1:
        tail = j1 - j if j1 - j < width else 0
        _tile(rows, False, tail, a, ao, a_si, a_sp, b, bo + j, ldb, c, co + j, ldc, k,
              alpha, beta, cont)
        j += width


@njit(**INNER)
def _panel(a, ao, a_si, a_sp, b, bo, ldb, c, co, ldc, m, cols, k, alpha, beta, width,
           cont):
    """c (m rows, cols columns) <- alpha * a @ b (+ beta * c), b's rows contiguous and
    ldb apart, in tiles of up to ROWS rows; a, b, c pointers, width the lanes of a
    vector of their dtype; cont: the sums go on from c's values (_emit_tile)."""
    if k * cols * (VECTOR_BYTES // width) <= ROWS_OUTER_MAX_BYTES:
        # rows outer: a block of rows of op(a) is read from memory once for all of its
        # tiles across the columns while op(b) (one batch of activations or deltas)
        # stays in L2; the forward product, whose op(a) is the weights read down their
        # columns, is faster this way at 1024 x 1024 (batch 64)
        for i0 in range(0, m, ROWS):
            _row_block(a, ao + i0 * a_si, a_si, a_sp, b, bo, ldb, c, co + i0 * ldc, ldc,
                       min(ROWS, m - i0), 0, cols, k, alpha, beta, width, cont)
    else:
        # columns outer: op(b) is too large for L2, so each column panel (k x VECS
        # vectors) is kept there while every row block passes over it
        step = VECS * width
        for j0 in range(0, cols, step):
            for i0 in range(0, m, ROWS):
                _row_block(a, ao + i0 * a_si, a_si, a_sp, b, bo, ldb, c, co + i0 * ldc,
                           ldc, min(ROWS, m - i0), j0, min(j0 + step, cols), k, alpha, beta,
                           width, cont)


def transpose_block(src, ld, shift, perm, po, rows, cols, dst, do, ldd):
    """dst[do + q * ldd + r] <- src[index(r) * ld + shift + q] for q < cols and r < width
    (width: lanes(dtype)), index(r) = po + r, or perm[po + r] where perm is an array:
    ``rows`` (1 .. width) rows of src, ``cols`` (1 .. width) elements each, as the first
    columns of ``cols`` rows of dst; dst's other columns r >= rows get 0, and src's rows
    from ``rows`` on are not read.  src: a C-contiguous float array (read flat) or a
    pointer, dst: a 1-D float array or a pointer, of one dtype.  A copy: the same bits.

    Compiled, the block goes through vector registers: ``width`` loads (masked past
    cols), log2(width) levels of two-source shuffles (_butterfly), and a store per row
    of dst.  An element-by-element copy of a transpose costs a load and a store per
    element, as much in float32 as in float64; this moves 16 float32 (8 float64) at once.
    """
    width = lanes(src.dtype)
    flat = src.reshape(-1)
    for q in range(cols):
        for r in range(width):
            if r < rows:
                index = perm[po + r] if perm is not None else po + r
                dst[do + q * ldd + r] = flat[index * ld + shift + q]
            else:  # neither the row nor its perm entry is read
                dst[do + q * ldd + r] = 0


def _butterfly(builder, rows, width):
    """The transpose of a width x width block held as ``width`` row vectors (width a power
    of two): at level h, rows i and i + h (i without bit h) exchange their off-diagonal
    h x h blocks, which swaps bit h of the row index with bit h of the lane index; the
    log2(width) levels together swap them all.  Each level is ``width`` two-source
    shuffles with constant masks (x86: unpack, shufps, shuf32x4)."""
    i32 = ir.IntType(32)
    h = 1
    while h < width:
        low = ir.Constant(ir.VectorType(i32, width),
                          [l if not l & h else width + l - h for l in range(width)])
        high = ir.Constant(ir.VectorType(i32, width),
                           [l + h if not l & h else width + l for l in range(width)])
        out = list(rows)
        for i in range(width):
            if not i & h:
                out[i] = builder.shuffle_vector(rows[i], rows[i + h], low)
                out[i + h] = builder.shuffle_vector(rows[i], rows[i + h], high)
        rows = out
        h *= 2
    return rows


def _data_pointer(context, builder, typ, value):
    """A pointer to the first element of a C-contiguous float array, or the pointer."""
    if isinstance(typ, types.CPointer):
        return value
    return context.make_array(typ)(context, builder, value).data


def _is_float_data(t):
    return is_float_pointer(t) or (isinstance(t, types.Array) and t.dtype in FLOATS
                                   and t.layout == "C")


@compiled_as(transpose_block)
def _transpose_block(typingctx, src, ld, shift, perm, po, rows, cols, dst, do, ldd):
    ints = (ld, shift, po, rows, cols, do, ldd)
    by_perm = isinstance(perm, types.Array)
    if not (_is_float_data(src) and _is_float_data(dst) and src.dtype == dst.dtype
            and all(isinstance(t, types.Integer) for t in ints)
            and (isinstance(perm, types.NoneType) or
                 (by_perm and isinstance(perm.dtype, types.Integer) and perm.ndim == 1))):
        return None
    dtype = src.dtype
    sig = types.void(src, ld, shift, perm, po, rows, cols, dst, do, ldd)

    def codegen(context, builder, signature, args):
        def int64(i):
            return context.cast(builder, args[i], signature.args[i], types.int64)

        i64, i32 = ir.IntType(64), ir.IntType(32)
        make, suffix = _LLVM_FLOAT[dtype]
        width = lanes(dtype)
        vec = ir.VectorType(make(), width)
        bool_vec = ir.VectorType(ir.IntType(1), width)
        align = dtype.bitwidth // 8
        masked_load = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec.as_pointer(), i32, bool_vec, vec]),
            f"llvm.masked.load.v{width}{suffix}.p0")
        src_base = builder.gep(_data_pointer(context, builder, signature.args[0], args[0]),
                               [int64(2)])
        dst_base = builder.gep(_data_pointer(context, builder, signature.args[7], args[7]),
                               [int64(8)])
        ld_, po_, rows_, cols_, ldd_ = int64(1), int64(4), int64(5), int64(6), int64(9)
        lane_ids = ir.Constant(ir.VectorType(i64, width), list(range(width)))
        in_cols = builder.icmp_signed("<", lane_ids, _splat(builder, cols_,
                                                           ir.VectorType(i64, width)))
        if by_perm:
            perm_data = context.make_array(signature.args[3])(context, builder, args[3]).data
        loaded = []
        for r in range(width):
            index = builder.add(po_, ir.Constant(i64, r))
            present = builder.icmp_signed("<", ir.Constant(i64, r), rows_)
            if by_perm:  # perm[po + r], read only for the rows that are there
                slot = cgutils.alloca_once_value(builder, index)
                with builder.if_then(present):
                    entry = builder.load(builder.gep(perm_data, [index]))
                    builder.store(context.cast(builder, entry, signature.args[3].dtype,
                                               types.int64), slot)
                index = builder.load(slot)
            ptr = builder.gep(src_base, [builder.mul(index, ld_)])
            mask = builder.and_(in_cols, _splat(builder, present, bool_vec))
            loaded.append(builder.call(masked_load, [builder.bitcast(ptr, vec.as_pointer()),
                                                     ir.Constant(i32, align), mask,
                                                     ir.Constant(vec, None)]))
        for q, column in enumerate(_butterfly(builder, loaded, width)):
            ptr = builder.gep(dst_base, [builder.mul(ir.Constant(i64, q), ldd_)])
            with builder.if_then(builder.icmp_signed("<", ir.Constant(i64, q), cols_),
                                 likely=True):
                builder.store(column, builder.bitcast(ptr, vec.as_pointer()), align=align)
        return context.get_dummy_value()

    return sig, codegen


@njit(**INNER)
def _pack_transposed(b, j0, ldb, cols, k, panel, step, width):
    """panel[p * step + j] <- b[(j0 + j) * ldb + p] for p < k and j < cols (cols <= step,
    step a multiple of width): op(b)'s columns, contiguous in b, as the panel's rows,
    a width x width block at a time (transpose_block; its columns past cols, up to the
    next multiple of width, get 0: the tiles mask them off), the last k % width rows
    element by element.  A copy: the same bits."""
    kq = k - k % width
    for jb in range(0, cols, width):
        rows = min(width, cols - jb)
        for pb in range(0, kq, width):
            transpose_block(b, ldb, pb, None, j0 + jb, rows, width, panel, pb * step + jb,
                            step)
        for p in range(kq, k):
            for j in range(jb, jb + rows):
                panel[p * step + j] = b[(j0 + j) * ldb + p]


# With trans_a, a tile reads op(a) down the columns of a: its ROWS values of each step p
# are adjacent, the steps lda apart.  Where those k steps span more than L1 (a 1024 x
# 1024 float32 layer: 4 KB apart, every step's line in the same few cache sets), each
# tile fetched them again from L2 or beyond: the forward product of W4b's H = 1024 layer
# ran at 21-25 GFLOP/s (Zen 3, float32, 4 x 3 tiles).  So op(a) is first copied into
# blocks of ROWS rows whose steps are contiguous.  Copied 24 rows at a time over every
# step, the copy read a's rows a few values each, 4 KB apart: a third of the product
# (Zen 3, float32 1024 x 64 x 1024: 2.6 ms, 51 GFLOP/s; without trans_a, 1.9 ms).  Now
# the steps go PACK_A_STEPS at a time: those rows of a, read whole, are copied for every
# row block, and the tiles run them over every column, the sums going on from c
# (_emit_tile's cont), op(b)'s PACK_A_STEPS rows staying in L1.
PACK_A_MIN_STRIDE = 4096  # bytes: from here every step's line falls in the same L1 sets
PACK_A_STEPS = 64


@njit(**INNER)
def _packed_a_product(a, lda, b, ldb, c, ldc, m, n, k, alpha, beta, width):
    """gemm_at's product with trans_a and not trans_b: the steps PACK_A_STEPS at a time,
    op(a) for them copied first into row blocks of ROWS rows (the last fewer: block[i0
    * steps + (p - p0) * r + i] = op(a)[i0 + i, p]); the tiles run each chunk from the
    sums the one before left in c, storing them unscaled, and the last applies alpha.
    With beta != 0, c's values are kept aside first and beta * c added at the end, as
    the tiles add it.  The same operations in the same order: the same bits."""
    steps = min(PACK_A_STEPS, k)
    block = _stack_panel(c)
    if steps * m > block.shape[0]:
        block = scratch(c, steps * m)
    packed = address(block, 0)
    kept = block[:0]  # c's values, kept aside only with beta != 0 (no allocation else)
    if beta != 0:
        kept = scratch(c, m * n)
        for i in range(m):
            for j in range(n):
                kept[i * n + j] = c[i * ldc + j]
    one, zero = _like(c, 1.0), _like(c, 0.0)
    for p0 in range(0, k, steps):
        kc = min(steps, k - p0)
        for p in range(p0, p0 + kc):
            at = p * lda
            q = p - p0
            for i0 in range(0, m, ROWS):
                if m - i0 >= ROWS:  # a constant count: straight-line copies
                    for i in range(ROWS):
                        packed[i0 * kc + q * ROWS + i] = a[at + i0 + i]
                else:
                    r = m - i0
                    for i in range(r):
                        packed[i0 * kc + q * r + i] = a[at + i0 + i]
        last = p0 + kc == k
        scale = alpha if last and beta == 0 else one
        for i0 in range(0, m, ROWS):
            r = min(ROWS, m - i0)
            _panel(packed, i0 * kc, 1, r, b, p0 * ldb, ldb, c, i0 * ldc, ldc, r, n, kc, scale,
                   zero, width, p0 > 0)
    if beta != 0:
        for i in range(m):
            for j in range(n):
                c[i * ldc + j] = alpha * c[i * ldc + j] + beta * kept[i * n + j]
    hold(block)
    hold(kept)


# the panel of op(b) that tile_gemm packs with trans_b lives in its stack frame up to this
# size (k <= 128 samples at batch 64: every weight gradient of a mini-batch fit); a heap
# allocation for each product was a tenth of W4b's epoch at H = 16
PANEL_STACK_BYTES = 32 * 1024


@intrinsic
def _stack_panel(typingctx, like):
    """A 1-D array of PANEL_STACK_BYTES bytes of the dtype of like (a float array or
    pointer) in the stack frame of the function it is compiled into (no allocation;
    valid until that function returns)."""
    if not is_float_operand(like):
        return None
    dtype = like.dtype
    array_type = types.Array(dtype, 1, "C")
    count = PANEL_STACK_BYTES // (dtype.bitwidth // 8)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        data = cgutils.alloca_once(builder, context.get_data_type(dtype), size=count)
        out = context.make_array(array_type)(context, builder)
        itemsize = dtype.bitwidth // 8
        context.populate_array(out, data=data, shape=[ir.Constant(i64, count)],
                               strides=[ir.Constant(i64, itemsize)],
                               itemsize=ir.Constant(i64, itemsize), meminfo=None)
        return out._getvalue()

    return array_type(like), codegen


@njit(**JIT)
def tile_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """c <- alpha * op(a) @ op(b) + beta * c, row-major: gemm.py's contract and
    arguments (a, b, c 1-D arrays of one float dtype starting at the matrices' first
    elements), in the order the module docstring fixes.  See gemm_at."""
    gemm_at(trans_a, trans_b, m, n, k, alpha, address(a, 0), lda, address(b, 0), ldb, beta,
            address(c, 0), ldc)


@njit(**INNER)
def gemm_at(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """tile_gemm on pointers (intrinsics.address) to the matrices' first elements: what
    the per-batch path calls (no reference counting).

    op(b) must have contiguous rows for the tiles: with trans_b its columns are first
    copied, a panel of VECS vectors at a time, into a small buffer (k x VECS vectors, on
    the stack when it fits in PANEL_STACK_BYTES).
    """
    _gemm_at(True, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


@njit(**INNER)
def gemm_at_unpacked(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """gemm_at without the copy of op(a) for wide layers (_packed_a_product, which only a
    transposed op(a) with rows PACK_A_MIN_STRIDE bytes apart takes: the forward product
    of a layer of 512 float64 or 1,024 float32 units or more): the same numbers, slower
    for such a layer, and about 40% less to compile (gemm.py: the "tiles" unit of a
    network without such a layer)."""
    _gemm_at(False, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


@njit(**INNER)
def packs_a(trans_a, lda, k, itemsize):
    """Whether gemm_at copies op(a) first (_packed_a_product) for a product with these
    (trans_b False): a transposed op(a) whose rows lie PACK_A_MIN_STRIDE bytes apart or
    more, over more than ROWS steps.  (Python callers: gemm._packs_a.)"""
    return trans_a and lda * itemsize >= PACK_A_MIN_STRIDE and k > ROWS


@njit(**dict(INNER, inline="always"))
def _gemm_at(PACK_A, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """gemm_at's body; PACK_A (a constant, pruned before Numba types the call): whether
    it may take _packed_a_product (packs_a)."""
    alpha = _like(c, alpha)
    beta = _like(c, beta)
    if m <= 0 or n <= 0:
        return
    a_si, a_sp = (1, lda) if trans_a else (lda, 1)
    width = lanes_of(c)
    if not trans_b:
        if PACK_A and packs_a(trans_a, lda, k, VECTOR_BYTES // width):
            _packed_a_product(a, lda, b, ldb, c, ldc, m, n, k, alpha, beta, width)
        else:
            _panel(a, 0, a_si, a_sp, b, 0, ldb, c, 0, ldc, m, n, k, alpha, beta, width, False)
        return
    step = VECS * width
    panel = _stack_panel(c)
    if k * step > panel.shape[0]:
        panel = scratch(c, k * step)
    packed = address(panel, 0)
    for j0 in range(0, n, step):
        cols = min(step, n - j0)
        _pack_transposed(b, j0, ldb, cols, k, packed, step, width)
        _panel(a, 0, a_si, a_sp, packed, 0, step, c, j0, ldc, m, cols, k, alpha, beta, width,
               False)
    # a panel from scratch() would otherwise be freed after address(), its last use: the
    # loop wrote to freed memory (a crash once the panel was large enough to be unmapped)
    hold(panel)


refuse_python_calls(globals())  # the INNER functions: TypeError from Python, not a crash
