"""Explicit SIMD: a dot product in a fixed number of lanes, vectorized whatever LLVM decides.

Without fastmath LLVM may not reorder a sum, so ``for j: acc += w[j] * v[j]`` stays one
scalar chain: one add per 3-4 cycles.  Writing the same sum as independent scalar lanes
does not help either: LLVM's SLP vectorizer leaves the lanes scalar.  Here the lanes are
an LLVM vector (<16 x double>) built by hand, so the loop is 16-wide on every CPU (two
AVX-512 registers, four AVX2 ones) and the order of the sum is fixed by this file, not
by the compiler: the result is the same on every machine.

The order (``row_dot``): lane k sums the products with j = k mod 16 of the first
16 * (n // 16) terms, with fused multiply-adds in increasing j; the 16 lanes are added
as a balanced pairwise tree ((l0 + l1) + (l2 + l3)) + ...; the remaining n mod 16
terms are then added in order, each product rounded before its add.  A row shorter than
16 is therefore the plain left-to-right sum.

``lanes4`` does the same for dense.dot4 / dense.sum4, whose order (four lanes) all the
batch kernels share: one <4 x double> vector instead of four scalar chains.
"""
from llvmlite import ir
from numba import njit, types, uint64
from numba.core import cgutils
from numba.extending import intrinsic

from .config import JIT

LANES = 16
_LANE_MASK = ~(LANES - 1) & 0xFFFFFFFFFFFFFFFF


def _pairwise(builder, values):
    while len(values) > 1:
        values = [builder.fadd(values[i], values[i + 1]) for i in range(0, len(values), 2)]
    return values[0]


_LLVM_FLOAT = {types.float64: (ir.DoubleType, "f64"), types.float32: (ir.FloatType, "f32")}


def _float_arrays(*arrays):
    """1-D C-contiguous float32/float64 arrays, all of one dtype."""
    return all(isinstance(t, types.Array) and t.dtype in _LLVM_FLOAT and t.ndim == 1
               and t.layout == "C" for t in arrays) and len({t.dtype for t in arrays}) == 1


def _base(builder, context, arr_type, arr, offset):
    """Pointer to arr[offset] (computed once, before a loop)."""
    return builder.gep(context.make_array(arr_type)(context, builder, arr).data, [offset])


def _at(builder, base, j, vec):
    """base + j as a pointer to a vector."""
    return builder.bitcast(builder.gep(base, [j]), vec.as_pointer())


def _splat(builder, value, vec):
    """The vector type ``vec`` with ``value`` in every element."""
    out = ir.Constant(vec, None)
    for k in range(vec.count):
        out = builder.insert_element(out, value, ir.Constant(ir.IntType(64), k))
    return out


def _lanes_loop(w, wo, v, vo, m, extra, update):
    """The intrinsic for one pass over w[wo:wo+m] against v[vo:vo+m] in LANES lanes:
    returns the lane sums combined pairwise; with ``update``, each block of w is also
    replaced by w - lr * (a * v) (extra = (a, lr)) after it has been read.

    w and v share a dtype (float32 or float64), the type of the sums.  The update follows
    Numba's typing of the scalar statement ``w[j] -= lr * (a * v[j])``: a * v in the
    arrays' dtype, the rest in float64 when lr is float64, rounded back on the store."""
    ok = _float_arrays(w, v) and all(isinstance(t, types.Integer) for t in (wo, vo, m))
    ok = ok and all(isinstance(t, types.Float) for t in extra)
    if not ok:
        return None
    dtype = w.dtype
    wide = types.float64 if any(t == types.float64 for t in extra[1:]) else dtype

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        make, suffix = _LLVM_FLOAT[dtype]
        vec = ir.VectorType(make(), LANES)
        wide_vec = ir.VectorType(_LLVM_FLOAT[wide][0](), LANES)
        wo_, vo_, m_ = (context.cast(builder, args[k], signature.args[k], types.uint64)
                        for k in (1, 3, 4))
        if update:
            a = _splat(builder, context.cast(builder, args[5], signature.args[5], dtype), vec)
            lr = _splat(builder, context.cast(builder, args[6], signature.args[6], wide),
                        wide_vec)
        w_base = _base(builder, context, signature.args[0], args[0], wo_)
        v_base = _base(builder, context, signature.args[2], args[2], vo_)
        align = dtype.bitwidth // 8
        vfma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                              f"llvm.fma.v{LANES}{suffix}")
        acc = cgutils.alloca_once_value(builder, ir.Constant(vec, None))  # zeros
        with cgutils.for_range_slice(builder, ir.Constant(i64, 0), m_,
                                     ir.Constant(i64, LANES)) as (j, _):
            wj = _at(builder, w_base, j, vec)
            x = builder.load(wj, align=align)
            y = builder.load(_at(builder, v_base, j, vec), align=align)
            builder.store(builder.call(vfma, [x, y, builder.load(acc)]), acc)
            if update:
                step = builder.fmul(a, y)
                if wide != dtype:
                    step, x = builder.fpext(step, wide_vec), builder.fpext(x, wide_vec)
                new = builder.fsub(x, builder.fmul(lr, step))
                if wide != dtype:
                    new = builder.fptrunc(new, vec)
                builder.store(new, wj, align=align)
        total = builder.load(acc)
        return _pairwise(builder, [builder.extract_element(total, ir.Constant(i64, k))
                                   for k in range(LANES)])

    return dtype(w, wo, v, vo, m, *extra), codegen


@intrinsic
def _lanes_dot(typingctx, w, wo, v, vo, m):
    """sum of w[wo + j] * v[vo + j] for j < m (m a multiple of LANES) in LANES lanes,
    combined pairwise.  1-D C-contiguous float32/float64 arrays of one dtype, unsigned
    offsets; no bounds checks (the caller's job)."""
    return _lanes_loop(w, wo, v, vo, m, (), update=False)


@intrinsic
def _lanes_dot_sgd(typingctx, w, wo, v, vo, m, a, lr):
    """_lanes_dot, and w[wo + j] -= lr * (a * v[vo + j]) once each term is read."""
    return _lanes_loop(w, wo, v, vo, m, (a, lr), update=True)


@njit(inline="always", **JIT)
def row_dot(w, wo, v, vo, n):
    """sum_j w[wo + j] * v[vo + j] for j < n (n >= 1), in the order the module docstring
    fixes.  w, v: 1-D C-contiguous, both float64 or both float32; wo, vo, n: uint64."""
    m = n & uint64(_LANE_MASK)
    if m == 0:
        acc = w[wo] * v[vo]
        start = uint64(1)
    else:
        acc = _lanes_dot(w, wo, v, vo, m)
        start = m
    for j in range(start, n):
        acc += w[wo + j] * v[vo + j]
    return acc


@njit(inline="always", **JIT)
def row_dot_sgd(w, wo, v, vo, n, a, lr):
    """row_dot(w, wo, v, vo, n) with the values before the update, and the plain SGD step
    w[wo + j] -= lr * (a * v[vo + j]) for every j: one pass over the row."""
    m = n & uint64(_LANE_MASK)
    if m == 0:
        acc = w[wo] * v[vo]
        w[wo] -= lr * (a * v[vo])
        start = uint64(1)
    else:
        acc = _lanes_dot_sgd(w, wo, v, vo, m, a, lr)
        start = m
    for j in range(start, n):
        acc += w[wo + j] * v[vo + j]
        w[wo + j] -= lr * (a * v[vo + j])
    return acc


@intrinsic
def lanes4(typingctx, x, xo, y, yo, q):
    """dense.dot4's four partial sums over s < q (q a multiple of 4) as one
    <4 x double> vector: lane k = fma-sum of x[xo + s] * y[yo + s] over s = k mod 4, in
    increasing s; y None gives the plain sums of x (dense.sum4).  Returns the 4 lanes.
    float32 rows are summed in float64, as dot4 sums them (its lanes are float64)."""
    sums = y is None or isinstance(y, types.NoneType)
    arrays = (x,) if sums else (x, y)
    if not _float_arrays(*arrays) or not all(isinstance(t, types.Integer)
                                             for t in (xo, q)):
        return None
    dtype = x.dtype
    result = types.UniTuple(types.float64, 4)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        vec = ir.VectorType(_LLVM_FLOAT[dtype][0](), 4)
        dvec = ir.VectorType(ir.DoubleType(), 4)
        vfma = cgutils.get_or_insert_function(builder.module,
                                              ir.FunctionType(dvec, [dvec] * 3),
                                              "llvm.fma.v4f64")
        xo_ = context.cast(builder, args[1], signature.args[1], types.uint64)
        q_ = context.cast(builder, args[4], signature.args[4], types.uint64)
        x_base = _base(builder, context, signature.args[0], args[0], xo_)
        if not sums:
            yo_ = context.cast(builder, args[3], signature.args[3], types.uint64)
            y_base = _base(builder, context, signature.args[2], args[2], yo_)
        align = dtype.bitwidth // 8
        acc = cgutils.alloca_once_value(builder, ir.Constant(dvec, None))

        def load(base, j):
            v = builder.load(_at(builder, base, j, vec), align=align)
            return v if dtype == types.float64 else builder.fpext(v, dvec)

        with cgutils.for_range_slice(builder, ir.Constant(i64, 0), q_,
                                     ir.Constant(i64, 4)) as (j, _):
            xv = load(x_base, j)
            if sums:
                builder.store(builder.fadd(builder.load(acc), xv), acc)
            else:
                builder.store(builder.call(vfma, [xv, load(y_base, j), builder.load(acc)]),
                              acc)
        total = builder.load(acc)
        lanes = [builder.extract_element(total, ir.Constant(i64, k)) for k in range(4)]
        return context.make_tuple(builder, result, lanes)

    return result(x, xo, y, yo, q), codegen
