"""The few operations Numba cannot express without LLVM, each with its plain-Python meaning.

Every function here is an ordinary Python function (what runs under
``NUMBA_DISABLE_JIT=1``, in coverage and in pdb) that Numba compiles to one LLVM
instruction or vector loop, emitted in the kernel that calls it (``compiled_as``):

- ``fma(a, b, c)``: a * b + c rounded once (llvm.fma).  Numba contracts nothing
  without fastmath, so this is the only way to get one; with a correctly rounded
  software fma where the CPU has none, results do not depend on the CPU.
- ``float64_from_bits(i)`` / ``float32_from_bits(i)``: the float whose IEEE-754 bits
  are the integer ``i`` (a bitcast): exp builds its 2**k from exponent bits in a
  register, so its loops vectorize; ``float64_bits(x)``, the other way.
- ``like(value, x)``: ``value`` in x's float type, so that a rule's constant keeps a
  float32 model's arithmetic in float32 (not an LLVM operation: a typed conversion).
- ``lanes4(x, xo, y, yo, n)``: the four partial sums of rules.dot4 from one 256-bit
  vector of chains, <4 x double> or <8 x float> (``sum_width``; LLVM's SLP vectorizer
  left four scalar chains scalar).
- ``_dot4_group``: how rules.dot4_group(out, o, xs, ys, n) compiles -- several of
  rules.dot4's sums in one loop, their chains interleaved (rules.py registers it with
  ``compiled_as`` on that function, its Python meaning, written with dot4).
- ``squared_error_sum(out, y, w, n)``: rules.loss_sum of squared errors, its sixteen
  chains in the arrays' dtype, four <4 x double> or two <8 x float> (LLVM kept scalar
  chains scalar).
- ``lanes_dot(w, wo, v, vo, m)`` / ``lanes_dot_step(...)``: a dot product in LANES
  lanes (one <16 x float> vector), and the same fused with the plain SGD step of w;
  ``lanes_dot_step_carry`` takes its lanes from, or leaves them in, a buffer, so that
  threads can each run a piece of one row's sum (kernels/sample_share.py).
- ``address(arr, offset)``: a typed pointer to arr[offset] (the gemm units' operands);
  ``hold(arr)`` keeps an array the kernel allocated alive while such a pointer is in use.
- ``borrowed(values)``: a tuple's arrays as views without a reference count (no atomic
  instructions where a loop takes views of them).
- ``exp(x)``: libm's exp in x's precision.  Compiled, this is math.exp, for which Numba
  calls expf on a float32; its Python meaning (python_exp) calls that too, through
  ctypes: the float64 result rounded to float32 may differ in the last bit.

Without fastmath LLVM may not reorder a sum, so ``acc += w[j] * v[j]`` stays one scalar
chain.  The lane functions fix another order, written here and nowhere else: it is the
same on every machine, and the Python meanings below compute exactly it.
"""
import ctypes
import ctypes.util
import functools
import inspect
import math
import struct
from fractions import Fraction

import numpy as np
from llvmlite import ir
from numba import config, types
from numba.core import cgutils
from numba.extending import intrinsic, lower_builtin, type_callable

LANES = 16  # lanes of lanes_dot: two AVX-512 registers of float64, four AVX2 ones

_LLVM_FLOAT = {types.float64: (ir.DoubleType, "f64"), types.float32: (ir.FloatType, "f32")}


def compiled_as(meaning):
    """Numba compiles a kernel's call of ``meaning`` (a plain Python function: what runs
    under ``NUMBA_DISABLE_JIT=1`` and when Python calls it) with the decorated
    function, an @intrinsic's definition -- (typing context, argument types) ->
    (signature, codegen), or None where the types do not fit -- whose code is emitted
    in the calling kernel itself.  An @overload would instead be compiled as a
    function of its own for every signature (and, with inline="always", typed again at
    every call), which a first fit waits for.  Returns the definition as an @intrinsic."""
    def register(definition):
        # the call's arguments as the definition names them (its first is the context)
        parameters = inspect.signature(definition)
        parameters = parameters.replace(parameters=list(parameters.parameters.values())[1:])

        @type_callable(meaning)
        def typing(typingctx):
            def typer(*args):
                found = definition(typingctx, *args)
                return None if found is None else found[0]
            typer.pysig = parameters
            return typer

        @lower_builtin(meaning, types.VarArg(types.Any))
        def lowering(context, builder, signature, args):
            _, codegen = definition(context.typing_context, *signature.args)
            return codegen(context, builder, signature, args)

        return intrinsic(definition)
    return register


# ------------------------------------------------------------------------------- fma
def fma(a, b, c):
    """a * b + c with one rounding (float32 when all three are float32, else float64)."""
    single = all(isinstance(v, np.float32) for v in (a, b, c))
    fa, fb, fc = float(a), float(b), float(c)
    if not all(math.isfinite(v) for v in (fa, fb, fc)):
        # the IEEE special cases: a product of finite a, b is exact (never inf), so an
        # infinite or NaN c is the result; otherwise inf and nan propagate alike
        exact = fc if math.isfinite(fa) and math.isfinite(fb) else fa * fb + fc
        return np.float32(exact) if single else exact
    exact = Fraction(fa) * Fraction(fb) + Fraction(fc)
    if exact == 0:  # IEEE's sign: -0 only for a zero product and c both negative
        negative = fc == 0 and math.copysign(1.0, fa) * math.copysign(1.0, fb) < 0 \
            and math.copysign(1.0, fc) < 0
        zero = -0.0 if negative else 0.0
        return np.float32(zero) if single else zero
    if single:
        return _round_to_float32(exact)
    try:
        return float(exact)  # int / int true division rounds correctly
    except OverflowError:  # rounds beyond the largest float64
        return math.inf if exact > 0 else -math.inf


def _round_to_float32(exact):
    """The float32 nearest the rational ``exact`` (ties to even), without the double
    rounding of float64 first."""
    with np.errstate(over="ignore"):  # overflow to inf is a result here, not an error
        near = np.float32(float(exact))
        if not np.isfinite(near):  # decided below, against the largest float32
            near = np.float32(math.copysign(np.finfo(np.float32).max, near))
        if Fraction(float(near)) == exact:
            return near
        below, above = (np.nextafter(near, np.float32(-np.inf)), near) \
            if Fraction(float(near)) > exact else (near, np.nextafter(near, np.float32(np.inf)))
    d_below = exact - _value(below)
    d_above = _value(above) - exact
    if d_below != d_above:
        return below if d_below < d_above else above
    return below if int(below.view(np.int32)) % 2 == 0 else above


def _value(x):
    """A float32 as a rational; +-inf as +-2**128, where the rounding to nearest puts it
    (IEEE rounds as if the exponent had no bound, then overflows)."""
    if np.isfinite(x):
        return Fraction(float(x))
    return Fraction(2 ** 128) if x > 0 else -Fraction(2 ** 128)


@compiled_as(fma)
def _llvm_fma(typingctx, a, b, c):
    if not all(isinstance(t, types.Float) for t in (a, b, c)):
        return None
    single = a == b == c == types.float32
    ty = types.float32 if single else types.float64

    def codegen(context, builder, signature, args):
        llty, suffix = (ir.FloatType(), "f32") if single else (ir.DoubleType(), "f64")
        fn = cgutils.get_or_insert_function(builder.module,
                                            ir.FunctionType(llty, [llty] * 3),
                                            f"llvm.fma.{suffix}")
        vals = [context.cast(builder, v, t, ty) for v, t in zip(args, signature.args)]
        return builder.call(fn, vals)

    return ty(a, b, c), codegen


# ------------------------------------------------------------- floats from their bits
def float64_from_bits(bits):
    """The float64 whose IEEE-754 bit pattern is the int64 ``bits``."""
    return struct.unpack("<d", struct.pack("<q", int(bits)))[0]


def float32_from_bits(bits):
    """The float32 whose IEEE-754 bit pattern is the int32 ``bits``."""
    # a view, not struct: struct widens to a Python float, which quiets a signalling NaN
    return np.int32(bits).view(np.float32)


_FLOAT_OF_BITS = {types.int64: (types.float64, ir.DoubleType),
                  types.int32: (types.float32, ir.FloatType)}


def _bitcast_to_float(bits, want):
    if types.unliteral(bits) != want:
        return None
    result, llvm_type = _FLOAT_OF_BITS[want]

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[0], signature.args[0], want)
        return builder.bitcast(value, llvm_type())

    return result(bits), codegen


@compiled_as(float64_from_bits)
def _float64_from_bits(typingctx, bits):
    return _bitcast_to_float(bits, types.int64)


def float64_bits(x):
    """The IEEE-754 bit pattern of the float64 ``x``, as an int64 (a bitcast: the
    inverse of float64_from_bits).  An int64 in Python too, so that shifts wrap as they
    do compiled."""
    return np.int64(struct.unpack("<q", struct.pack("<d", float(x)))[0])


@compiled_as(float64_bits)
def _float64_bits(typingctx, x):
    if types.unliteral(x) != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(x), codegen


@compiled_as(float32_from_bits)
def _float32_from_bits(typingctx, bits):
    return _bitcast_to_float(bits, types.int32)


# ------------------------------------------------------------------------------ like
def like(value, x):
    """``value`` in the float type of ``x`` (a float, or an array of floats): float32
    for float32, else float64.  The rules write their constants and scales through it,
    so a float32 model computes in float32 where a bare float64 constant would widen
    the arithmetic to float64 (Numba types ``x * 1.0`` as float64)."""
    single = getattr(x, "dtype", None) == np.float32 or isinstance(x, np.float32)
    return np.float32(value) if single else float(value)


@compiled_as(like)
def _like(typingctx, value, x):
    if not isinstance(value, (types.Float, types.Integer, types.Boolean)):
        return None
    t = x.dtype if isinstance(x, types.Array) else x
    result = types.float32 if t == types.float32 else types.float64

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[0], signature.args[0], result)

    return result(value, x), codegen


# ---------------------------------------------------------------------------- lanes4
def sum_width(x):
    """How many interleaved chains lanes4 runs for x's dtype: one 256-bit vector, 4
    float64 or 8 float32 (a float32 sum runs half as many steps as a float64 one)."""
    return 8 if x.dtype == np.float32 else 4


@compiled_as(sum_width)
def _sum_width(typingctx, x):
    if not (isinstance(x, types.Array) and x.dtype in _LLVM_FLOAT):
        return None
    width = _width(x.dtype)

    def codegen(context, builder, signature, args):
        return context.get_constant(types.intp, width)

    return types.intp(x), codegen


def lanes4(x, xo, y, yo, n):
    """The four partial sums of rules.dot4 over s < n: chain k is the fused multiply-add
    chain of x[xo + s] * y[yo + s] over s = k mod sum_width(x), in increasing s, from 0;
    ``y`` None: the plain sums of x.  float64: the four chains are the four sums;
    float32: eight chains, and sum k is chain k + chain k + 4.  In x's dtype (float32
    sums in float32: a float32 model does not widen its gradients)."""
    single = x.dtype == np.float32
    width = sum_width(x)
    acc = [np.float32(0.0) if single else 0.0] * width
    for s in range(int(n)):
        xv = x[int(xo) + s] if single else float(x[int(xo) + s])
        if y is None:
            acc[s % width] = acc[s % width] + xv
        else:
            yv = y[int(yo) + s] if single else float(y[int(yo) + s])
            acc[s % width] = fma(xv, yv, acc[s % width])
    if width == 8:
        acc = [acc[k] + acc[k + 4] for k in range(4)]
    return acc[0], acc[1], acc[2], acc[3]


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


def _width(dtype):
    """sum_width for a Numba float type: the chains of one 256-bit vector."""
    return 8 if dtype == types.float32 else 4


def _chains(builder, dtype, x_bases, y_bases, n, start=None, inits=None):
    """The vector loop of lanes4 for several sums at once, each over s < n from its own
    pointers: sum k's chains are one 256-bit vector (4 float64 or 8 float32, sum_width)
    of fused multiply-adds of x_bases[k][s] * y_bases[k][s] in increasing s -- or plain
    adds of x_bases[k][s] where y_bases[k] is None -- and the sums' chains advance
    together, one vector step each per step of the loop.  The last n % width samples
    are one more step with masked loads, whose masked-off chains keep their value (a
    select: not even a zero's sign changes), so nothing past n is read.  Returns, per
    sum, its vector of chains.  ``start`` (at most n; a multiple of the width unless it
    is n, an empty range) and ``inits`` (per sum, its vector of chains there): a loop
    over s in [start, n) that goes on from those chains (_dot4_group_range), instead of
    from zeros at 0."""
    i64 = ir.IntType(64)
    make, suffix = _LLVM_FLOAT[dtype]
    width = _width(dtype)
    vec = ir.VectorType(make(), width)
    vfma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                          f"llvm.fma.v{width}{suffix}")
    align = dtype.bitwidth // 8
    if inits is None:
        inits = [ir.Constant(vec, None)] * len(x_bases)
    accs = [cgutils.alloca_once_value(builder, init) for init in inits]

    def step(j, load):
        for x_base, y_base, acc in zip(x_bases, y_bases, accs):
            xv = load(_at(builder, x_base, j, vec))
            if y_base is None:
                new = builder.fadd(builder.load(acc), xv)
            else:
                yv = load(_at(builder, y_base, j, vec))
                new = builder.call(vfma, [xv, yv, builder.load(acc)])
            yield acc, new

    tail = builder.urem(n, ir.Constant(i64, width))
    q = builder.sub(n, tail)
    with cgutils.for_range_slice(builder, ir.Constant(i64, 0) if start is None else start, q,
                                 ir.Constant(i64, width)) as (j, _):
        for acc, new in step(j, lambda ptr: builder.load(ptr, align=align)):
            builder.store(new, acc)
    has_tail = builder.icmp_unsigned("!=", tail, ir.Constant(i64, 0))
    if start is not None:  # an empty range [n, n) from a start past the last whole step
        has_tail = builder.and_(has_tail, builder.icmp_unsigned(">=", q, start))
    with builder.if_then(has_tail):
        mask, load = _first_lanes(builder, vec, tail, align)
        for acc, new in step(q, load):
            builder.store(builder.select(mask, new, builder.load(acc)), acc)
    return [builder.load(acc) for acc in accs]


def _first_lanes(builder, vec, count, align):
    """The masked last step of a vector loop: the mask of a vector's first ``count``
    lanes (an i64 value, 1 .. vec.count) and a load of those lanes alone, zeros in the
    others (llvm.masked.load: nothing past them is read).  The lanes are compared as
    integers of the elements' width: a float32 mask built from i64 lanes took seven
    dependent instructions of packing and shuffling on AVX2, one compare built this way."""
    i32 = ir.IntType(32)
    width = vec.count
    lane = ir.IntType(32 if isinstance(vec.element, ir.FloatType) else 64)
    mask = builder.icmp_unsigned("<", ir.Constant(ir.VectorType(lane, width), list(range(width))),
                                 _splat(builder, builder.trunc(count, lane)
                                        if lane.width < count.type.width else count,
                                        ir.VectorType(lane, width)))
    suffix = "f32" if isinstance(vec.element, ir.FloatType) else "f64"
    masked_load = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec.as_pointer(), i32,
                                              ir.VectorType(ir.IntType(1), width), vec]),
        f"llvm.masked.load.v{width}{suffix}.p0")
    zeros, align_arg = ir.Constant(vec, None), ir.Constant(i32, align)
    return mask, lambda ptr: builder.call(masked_load, [ptr, align_arg, mask, zeros])


def _four_sums(builder, chains):
    """A vector of lanes4's chains as its four partial sums (float32: chain c + chain
    c + 4)."""
    i64 = ir.IntType(64)
    lanes = [builder.extract_element(chains, ir.Constant(i64, c)) for c in range(chains.type.count)]
    if len(lanes) == 8:
        lanes = [builder.fadd(lanes[c], lanes[c + 4]) for c in range(4)]
    return lanes


def _shuffle(builder, a, b, picks):
    i32 = ir.IntType(32)
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, len(picks)), picks))


def _group_sums(builder, chains):
    """Each vector of lanes4's chains summed as rules.dot4 sums it -- (l0 + l1) +
    (l2 + l3) of its four partial sums -- a vector of them at a time: the vectors are
    transposed so that each add serves one lane of every sum (the float32 fold first,
    a 128-bit half each).  Returns vectors of consecutive sums: 8 per <8 x float>, 4
    per <4 x double> (the last one's lanes past len(chains) unused).  Every sum sees
    the adds of _four_sums and dot4, in their order: one sum at a time, the extracts
    and scalar adds cost as much as the float32 loop over 100 samples."""
    vec = chains[0].type
    width = vec.count
    per = 8 if width == 8 else 4  # sums per result vector
    zero = ir.Constant(vec, None)
    results = []
    for first in range(0, len(chains), per):
        v = list(chains[first:first + per]) + [zero] * (per - len(chains[first:first + per]))
        if width == 8:
            # y_k = [chain c + chain c + 4 of sum k | the same of sum k + 4]
            y = [builder.fadd(_shuffle(builder, v[k], v[k + 4], [0, 1, 2, 3, 8, 9, 10, 11]),
                              _shuffle(builder, v[k], v[k + 4], [4, 5, 6, 7, 12, 13, 14, 15]))
                 for k in range(4)]
            u = [_shuffle(builder, y[a], y[a + 1], picks) for a in (0, 2)
                 for picks in ([0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15])]
            lo, hi = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
            g = [_shuffle(builder, u[0], u[2], lo), _shuffle(builder, u[0], u[2], hi),
                 _shuffle(builder, u[1], u[3], lo), _shuffle(builder, u[1], u[3], hi)]
        else:
            t = [_shuffle(builder, v[a], v[a + 1], picks) for a in (0, 2)
                 for picks in ([0, 4, 2, 6], [1, 5, 3, 7])]
            g = [_shuffle(builder, t[0], t[2], [0, 1, 4, 5]),
                 _shuffle(builder, t[1], t[3], [0, 1, 4, 5]),
                 _shuffle(builder, t[0], t[2], [2, 3, 6, 7]),
                 _shuffle(builder, t[1], t[3], [2, 3, 6, 7])]
        # g[c]: partial sum c of every sum, lane by lane
        results.append(builder.fadd(builder.fadd(g[0], g[1]), builder.fadd(g[2], g[3])))
    return results


@compiled_as(lanes4)
def _lanes4(typingctx, x, xo, y, yo, n):
    sums = isinstance(y, types.NoneType)
    arrays = (x,) if sums else (x, y)
    if not _float_arrays(*arrays) or not all(isinstance(t, types.Integer) for t in (xo, n)):
        return None
    dtype = x.dtype
    result = types.UniTuple(dtype, 4)

    def codegen(context, builder, signature, args):
        xo_ = context.cast(builder, args[1], signature.args[1], types.uint64)
        n_ = context.cast(builder, args[4], signature.args[4], types.uint64)
        x_base = _base(builder, context, signature.args[0], args[0], xo_)
        y_base = None
        if not sums:
            yo_ = context.cast(builder, args[3], signature.args[3], types.uint64)
            y_base = _base(builder, context, signature.args[2], args[2], yo_)
        (chains,) = _chains(builder, dtype, [x_base], [y_base], n_)
        return context.make_tuple(builder, result, _four_sums(builder, chains))

    return result(x, xo, y, yo, n), codegen


def _array_types(tup):
    return tuple(tup.types) if isinstance(tup, types.BaseTuple) else None


def _group_types(xs, ys, *others):
    """(the types of the arrays of the tuples xs and ys) of a dot4_group call, or None
    where they do not fit: as many xs as ys, ys' arrays or None, all of them and
    ``others`` 1-D contiguous arrays of one float dtype."""
    x_types, y_types = _array_types(xs), _array_types(ys)
    if x_types is None or y_types is None or len(x_types) != len(y_types) or not x_types:
        return None
    arrays = list(others) + list(x_types) + [t for t in y_types
                                             if not isinstance(t, types.NoneType)]
    return (x_types, y_types) if _float_arrays(*arrays) else None


def _group_bases(builder, context, x_types, y_types, xs, ys):
    """Pointers to the first element of each array of the tuples xs and ys (None for a
    None of ys)."""
    zero = ir.Constant(ir.IntType(64), 0)
    x_bases = [_base(builder, context, t, builder.extract_value(xs, k), zero)
               for k, t in enumerate(x_types)]
    y_bases = [None if isinstance(t, types.NoneType) else
               _base(builder, context, t, builder.extract_value(ys, k), zero)
               for k, t in enumerate(y_types)]
    return x_bases, y_bases


def _store_sums(builder, out_at, chains, align):
    """out_at[k] <- sum k of the vectors of chains (_group_sums), a whole vector of sums
    in one store."""
    i64 = ir.IntType(64)
    k = 0
    for sums in _group_sums(builder, chains):
        count = min(sums.type.count, len(chains) - k)
        if count == sums.type.count:
            builder.store(sums, _at(builder, out_at, ir.Constant(i64, k), sums.type),
                          align=align)
        else:
            for c in range(count):
                builder.store(builder.extract_element(sums, ir.Constant(i64, c)),
                              builder.gep(out_at, [ir.Constant(i64, k + c)]))
        k += count


def _dot4_group(typingctx, out, o, xs, ys, n):
    """rules.dot4_group compiled: the K sums' chains advance together in one loop over
    the samples (each sum its own 256-bit vector of chains, as lanes4 runs it alone,
    its last samples in a masked step), then each sum's (l0 + l1) + (l2 + l3) into
    out[o + k], several sums a vector (_group_sums).
    Every chain sees the same operations in the same order as rules.dot4 / sum4; only
    the independent chains interleave, so the loop runs at the FMA units' throughput,
    not one chain's latency."""
    found = _group_types(xs, ys, out)
    if found is None or not all(isinstance(t, types.Integer) for t in (o, n)):
        return None
    x_types, y_types = found
    dtype = out.dtype

    def codegen(context, builder, signature, args):
        x_bases, y_bases = _group_bases(builder, context, x_types, y_types, args[2], args[3])
        n_ = context.cast(builder, args[4], signature.args[4], types.uint64)
        chains = _chains(builder, dtype, x_bases, y_bases, n_)  # per k, as lanes4's
        o_ = context.cast(builder, args[1], signature.args[1], types.uint64)
        _store_sums(builder, _base(builder, context, signature.args[0], args[0], o_), chains,
                    dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(out, o, xs, ys, n), codegen


def dot4_group_range(out, o, xs, ys, start, stop, chains, last):
    """rules.dot4_group over the samples a range at a time: the K sums' chains advance
    over s in [start, stop) -- from zeros where start is 0, else from chains[(o + k) *
    W:(o + k + 1) * W] (W = sum_width), where the range before left them -- and then,
    when ``last``, out[o + k] gets each sum as dot4_group adds it up, else the chains go
    back to ``chains``.  The ranges [0, b1), [b1, b2), ..., [bm, n) (each start a
    multiple of W, or equal to its stop: an empty range) give dot4_group's numbers over n
    samples bit for bit: a chain's fused multiply-adds see the same operands in the same
    order, and a chain stored and loaded again is the same value.  ``chains``: a 1-D
    array of out's dtype, at least (o + K) * W long."""
    single = out.dtype == np.float32
    width = 8 if single else 4
    for k in range(len(xs)):
        base = (o + k) * width
        acc = ([out.dtype.type(0.0)] * width if start == 0 else
               [chains[base + c] for c in range(width)])
        if not single:
            acc = [float(a) for a in acc]
        for s in range(int(start), int(stop)):
            xv = xs[k][s] if single else float(xs[k][s])
            if ys[k] is None:
                acc[s % width] = acc[s % width] + xv
            else:
                yv = ys[k][s] if single else float(ys[k][s])
                acc[s % width] = fma(xv, yv, acc[s % width])
        if last:
            if width == 8:
                acc = [acc[c] + acc[c + 4] for c in range(4)]
            out[o + k] = (acc[0] + acc[1]) + (acc[2] + acc[3])
        else:
            for c in range(width):
                chains[base + c] = acc[c]


@compiled_as(dot4_group_range)
def _dot4_group_range(typingctx, out, o, xs, ys, start, stop, chains, last):
    """dot4_group_range compiled: _dot4_group's loop (_chains) from ``start`` on, its
    chains loaded (or zeros at 0) before and stored after, or summed (_group_sums) into
    out on the ``last`` range."""
    found = _group_types(xs, ys, out, chains)
    if (found is None or not isinstance(last, types.Boolean)
            or not all(isinstance(t, types.Integer) for t in (o, start, stop))):
        return None
    x_types, y_types = found
    dtype = out.dtype

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        zero = ir.Constant(i64, 0)
        make, _ = _LLVM_FLOAT[dtype]
        width = _width(dtype)
        vec = ir.VectorType(make(), width)
        align = dtype.bitwidth // 8
        x_bases, y_bases = _group_bases(builder, context, x_types, y_types, args[2], args[3])
        o_ = context.cast(builder, args[1], signature.args[1], types.uint64)
        start_ = context.cast(builder, args[4], signature.args[4], types.uint64)
        stop_ = context.cast(builder, args[5], signature.args[5], types.uint64)
        first = builder.icmp_unsigned("==", start_, zero)
        chains_at = _base(builder, context, signature.args[6], args[6],
                          builder.mul(o_, ir.Constant(i64, width)))
        # each sum's chains where the range before left them; at 0 zeros (the buffer may
        # hold anything there: the select drops what was loaded)
        inits = [builder.select(first, ir.Constant(vec, None),
                                builder.load(_at(builder, chains_at,
                                                 ir.Constant(i64, k * width), vec),
                                             align=align))
                 for k in range(len(x_types))]
        chains = _chains(builder, dtype, x_bases, y_bases, stop_, start_, inits)
        last = context.cast(builder, args[7], signature.args[7], types.boolean)
        with builder.if_else(last) as (summed, kept):
            with summed:
                _store_sums(builder, _base(builder, context, signature.args[0], args[0], o_),
                            chains, align)
            with kept:
                for k, value in enumerate(chains):
                    builder.store(value, _at(builder, chains_at, ir.Constant(i64, k * width),
                                             vec), align=align)
        return context.get_dummy_value()

    return types.none(out, o, xs, ys, start, stop, chains, last), codegen


# ----------------------------------------------------------------- squared_error_sum
LOSS_CHAINS = 16  # rules.loss_sum's chains: four <4 x double> vectors, or two <8 x float>


def squared_error_sum(out, y, w, n):
    """rules.loss_sum of the squared error, in the arrays' dtype: LOSS_CHAINS chains --
    chain c sums d * d with d = out[s] - y[s] (rules.squared_error), times w[s] where
    ``w`` is not None (rules._weighted: w[s] * term), over s = c mod LOSS_CHAINS in
    increasing s, from 0 -- added as rules._combined_chains adds them: sum k = (c[k] +
    c[k + 4]) + (c[k + 8] + c[k + 12]), then (s0 + s1) + (s2 + s3).  out, y (and w): 1-D
    arrays of one float dtype, the type of the sum."""
    zero = like(0.0, out)
    c = [zero] * LOSS_CHAINS
    for s in range(int(n)):
        d = out[s] - y[s]
        term = d * d
        if w is not None:
            term = w[s] * term
        c[s % LOSS_CHAINS] = c[s % LOSS_CHAINS] + term
    sums = [(c[k] + c[k + 4]) + (c[k + 8] + c[k + 12]) for k in range(4)]
    return (sums[0] + sums[1]) + (sums[2] + sums[3])


@compiled_as(squared_error_sum)
def _squared_error_sum(typingctx, out, y, w, n):
    """The chains as 256-bit vectors of the arrays' dtype (chain c: lane c % width of
    vector c // width; four <4 x double> or two <8 x float>), sixteen samples a step,
    one load of each array per vector; then each vector's halves added (float32) or the
    vectors pairwise (float64) -- both sum k = (c[k] + c[k + 4]) + (c[k + 8] + c[k + 12])
    -- and the four lanes (l0 + l1) + (l2 + l3).  The last n % 16 samples are steps
    whose chains past n keep their value (a select), as lanes4's, their loads masked
    unless the arrays hold the whole vector.  One vector of chains waits on its adds
    (~3 cycles each); LLVM left scalar chains scalar (~1 cycle per sample).  (Before,
    float32 terms were widened and summed in float64 chains: W3's float32 epoch,
    in-process alternating fits, took about 3-13 ns longer.)"""
    weighted = not isinstance(w, types.NoneType)
    if not _float_arrays(*((out, y, w) if weighted else (out, y))) \
            or not isinstance(n, types.Integer):
        return None
    dtype = out.dtype
    width = _width(dtype)  # one 256-bit load
    vectors = LOSS_CHAINS // width

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        vec = ir.VectorType(_LLVM_FLOAT[dtype][0](), width)
        align = dtype.bitwidth // 8
        zero = ir.Constant(i64, 0)
        bases = [_base(builder, context, signature.args[k], args[k], zero)
                 for k in ((0, 1, 2) if weighted else (0, 1))]
        n_ = context.cast(builder, args[3], signature.args[3], types.uint64)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, None))
                for _ in range(vectors)]

        def added(v, j, load):
            """Chain vector v plus the terms of samples j .. j + width - 1."""
            d = builder.fsub(load(_at(builder, bases[0], j, vec)),
                             load(_at(builder, bases[1], j, vec)))
            term = builder.fmul(d, d)
            if weighted:
                term = builder.fmul(load(_at(builder, bases[2], j, vec)), term)
            return builder.fadd(builder.load(accs[v]), term)

        tail = builder.urem(n_, ir.Constant(i64, LOSS_CHAINS))
        q = builder.sub(n_, tail)
        plain = lambda ptr: builder.load(ptr, align=align)  # noqa: E731
        with cgutils.for_range_slice(builder, zero, q, ir.Constant(i64, LOSS_CHAINS)) as (j, _):
            for v in range(vectors):
                builder.store(added(v, builder.add(j, ir.Constant(i64, width * v)), plain),
                              accs[v])
        lengths = [builder.extract_value(
            context.make_array(signature.args[k])(context, builder, args[k]).shape, 0)
            for k in range(len(bases))]
        for v in range(vectors):  # samples q + width v .. + width - 1
            offset = ir.Constant(i64, width * v)
            with builder.if_then(builder.icmp_unsigned(">", tail, offset)):
                j = builder.add(q, offset)
                mask, masked = _first_lanes(builder, vec, builder.sub(tail, offset), align)
                # where every array holds the whole vector (a generated kernel's padded
                # rows), plain loads: a masked load of the values the forward loop has
                # just stored waited for them, it seems (a float32 W3 epoch, in-process
                # alternating fits: 8-10 ns sooner, float64 12-37)
                end = builder.add(j, ir.Constant(i64, width))
                room = functools.reduce(builder.and_, [
                    builder.icmp_unsigned(">=", length, end) for length in lengths])
                with builder.if_else(room) as branches:
                    for branch, load in zip(branches, (plain, masked)):
                        with branch:
                            new = added(v, j, load)
                            builder.store(builder.select(mask, new, builder.load(accs[v])),
                                          accs[v])
        chains = [builder.load(acc) for acc in accs]
        if vectors == 4:
            total = builder.fadd(builder.fadd(chains[0], chains[1]),
                                 builder.fadd(chains[2], chains[3]))
        else:
            halves = [[_shuffle(builder, c, c, list(range(h, h + 4))) for h in (0, 4)]
                      for c in chains]
            total = builder.fadd(builder.fadd(*halves[0]), builder.fadd(*halves[1]))
        l0, l1, l2, l3 = (builder.extract_element(total, ir.Constant(i64, c)) for c in range(4))
        return builder.fadd(builder.fadd(l0, l1), builder.fadd(l2, l3))

    return dtype(out, y, w, n), codegen


# ------------------------------------------------------------------- lanes_dot(_step)
def lanes_dot(w, wo, v, vo, m):
    """sum of w[wo + j] * v[vo + j] for j < m (m a multiple of LANES): lane k is the
    fused multiply-add chain over j = k mod LANES from 0, the lanes then added as a
    balanced pairwise tree ((l0 + l1) + (l2 + l3)) + ....  w, v: one float dtype, the
    type of the sums."""
    single = w.dtype == np.float32
    acc = [np.float32(0) if single else 0.0] * LANES
    for j in range(int(m)):
        acc[j % LANES] = fma(w[int(wo) + j], v[int(vo) + j], acc[j % LANES])
    while len(acc) > 1:
        acc = [acc[i] + acc[i + 1] for i in range(0, len(acc), 2)]
    return acc[0]


def lanes_dot_step(w, wo, v, vo, m, a, lr):
    """lanes_dot with the values before the update, and w[wo + j] -= lr * (a * v[vo + j])
    for every j < m once that term has been read (Numba's typing of that statement: a * v
    in the arrays' dtype, the rest in float64 when lr is float64, rounded on the store)."""
    total = lanes_dot(w, wo, v, vo, m)
    # Numba types a Python float as float64; NumPy would keep np.float32 * float in float32
    wide = np.float64 if isinstance(lr, float) else w.dtype.type
    for j in range(int(m)):
        step = w.dtype.type(a) * v[int(vo) + j]
        w[int(wo) + j] = wide(w[int(wo) + j]) - wide(lr) * wide(step)
    return total


def lanes_dot_step_carry(w, wo, v, vo, m, a, lr, carry, co, load, store):
    """lanes_dot_step continued from the LANES partial sums at carry[co:] (``load``;
    else from zeros) and, with ``store``, left there unsummed (returns 0) rather than
    summed: a row's pieces, each over a multiple of LANES of its columns, run one after
    the other give the row's lanes_dot_step exactly.  m: a multiple of LANES."""
    single = w.dtype == np.float32
    acc = ([carry[int(co) + k] for k in range(LANES)] if load
           else [np.float32(0) if single else 0.0] * LANES)
    wide = np.float64 if isinstance(lr, float) else w.dtype.type
    for j in range(int(m)):
        x, y = w[int(wo) + j], v[int(vo) + j]
        acc[j % LANES] = fma(x, y, acc[j % LANES])
        w[int(wo) + j] = wide(x) - wide(lr) * wide(w.dtype.type(a) * y)
    if store:
        for k in range(LANES):
            carry[int(co) + k] = acc[k]
        return w.dtype.type(0)
    while len(acc) > 1:
        acc = [acc[i] + acc[i + 1] for i in range(0, len(acc), 2)]
    return acc[0]


def tail_dot(w, wo, v, vo, c, acc):
    """acc + w[wo] * v[vo] + ... + w[wo + c - 1] * v[vo + c - 1], added left to right,
    each product rounded before its add: a row's columns past its lanes (c < LANES;
    rules.row_dot).  acc of the arrays' dtype; -0.0 starts a sum at its first product
    exactly (-0.0 + p is p for every p, a zero's sign included)."""
    for j in range(int(c)):
        acc = acc + w[int(wo) + j] * v[int(vo) + j]
    return acc


def tail_dot_step(w, wo, v, vo, c, acc, a, lr):
    """tail_dot with the values before the update, and the plain step of those c
    weights, w[wo + j] -= lr * (a * v[vo + j]), rounded as lanes_dot_step rounds it."""
    wide = np.float64 if isinstance(lr, float) else w.dtype.type
    for j in range(int(c)):
        x, y = w[int(wo) + j], v[int(vo) + j]
        acc = acc + x * y
        w[int(wo) + j] = wide(x) - wide(lr) * wide(w.dtype.type(a) * y)
    return acc


def _pairwise(builder, values):
    while len(values) > 1:
        values = [builder.fadd(values[i], values[i + 1]) for i in range(0, len(values), 2)]
    return values[0]


def _lanes_total(builder, total):
    """_pairwise of the lanes of ``total`` (a <LANES x float> of lanes_dot's sums).  In
    float32 the first three levels run as 256-bit vector adds in the horizontal-add
    pattern (lane pairs within 128-bit halves), each add the one _pairwise makes: the
    sixteen extracts and fifteen scalar adds were as many instructions as a row of 64
    columns' vector loop."""
    i64 = ir.IntType(64)
    if total.type.count != 16 or not isinstance(total.type.element, ir.FloatType):
        return _pairwise(builder, [builder.extract_element(total, ir.Constant(i64, k))
                                   for k in range(total.type.count)])
    lo = _shuffle(builder, total, total, list(range(8)))
    hi = _shuffle(builder, total, total, list(range(8, 16)))
    evens, odds = [0, 2, 8, 10, 4, 6, 12, 14], [1, 3, 9, 11, 5, 7, 13, 15]
    # pairs: [l0+l1, l2+l3, l8+l9, l10+l11 | l4+l5, l6+l7, l12+l13, l14+l15]
    pairs = builder.fadd(_shuffle(builder, lo, hi, evens), _shuffle(builder, lo, hi, odds))
    # quads: [q0, q2, q0, q2 | q1, q3, q1, q3], q0 = (l0+l1)+(l2+l3), q1 = (l4+l5)+(l6+l7), ...
    quads = builder.fadd(_shuffle(builder, pairs, pairs, evens),
                         _shuffle(builder, pairs, pairs, odds))
    # octs: [q0+q1, q2+q3, ...]
    octs = builder.fadd(_shuffle(builder, quads, quads, [0, 1, 2, 3]),
                        _shuffle(builder, quads, quads, [4, 5, 6, 7]))
    return builder.fadd(builder.extract_element(octs, ir.Constant(i64, 0)),
                        builder.extract_element(octs, ir.Constant(i64, 1)))


def _plain_steps(builder, x, y, a, lr):
    """rules.plain_step of the weights ``x`` with gradients a * y, lane-wise: x - lr * (a *
    y), a * y in the weights' dtype and the rest in lr's (float64 for a float32 row when
    lr is float64, rounded back on the way out), as Numba types the scalar statement.
    ``a``, ``lr``: vectors of the value."""
    step = builder.fmul(a, y)
    if lr.type != x.type:
        step, wide_x = builder.fpext(step, lr.type), builder.fpext(x, lr.type)
        return builder.fptrunc(builder.fsub(wide_x, builder.fmul(lr, step)), x.type)
    return builder.fsub(x, builder.fmul(lr, step))


def _splat(builder, value, vec):
    out = ir.Constant(vec, None)
    for k in range(vec.count):
        out = builder.insert_element(out, value, ir.Constant(ir.IntType(64), k))
    return out


def _lanes_loop(w, wo, v, vo, m, extra, update, carried=()):
    """The lanes functions' vector loop; ``carried``: lanes_dot_step_carry's (carry, co,
    load, store) types, which follow ``extra`` among the arguments."""
    ok = _float_arrays(w, v) and all(isinstance(t, types.Integer) for t in (wo, vo, m))
    ok = ok and all(isinstance(t, types.Float) for t in extra)
    if carried:
        carry, co, load, store = carried
        ok = ok and _float_arrays(w, carry) and isinstance(co, types.Integer) and all(
            isinstance(t, (types.Boolean, types.Integer)) for t in (load, store))
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
        if carried:
            first = 5 + len(extra)
            co_ = context.cast(builder, args[first + 1], signature.args[first + 1],
                               types.uint64)
            lanes_at = _at(builder, _base(builder, context, signature.args[first],
                                          args[first], co_), ir.Constant(i64, 0), vec)
            load_ = context.cast(builder, args[first + 2], signature.args[first + 2],
                                 types.boolean)
            with builder.if_then(load_):
                builder.store(builder.load(lanes_at, align=align), acc)
        with cgutils.for_range_slice(builder, ir.Constant(i64, 0), m_,
                                     ir.Constant(i64, LANES)) as (j, _):
            wj = _at(builder, w_base, j, vec)
            x = builder.load(wj, align=align)
            y = builder.load(_at(builder, v_base, j, vec), align=align)
            builder.store(builder.call(vfma, [x, y, builder.load(acc)]), acc)
            if update:
                builder.store(_plain_steps(builder, x, y, a, lr), wj, align=align)
        total = builder.load(acc)
        summed = _lanes_total(builder, total)
        if not carried:
            return summed
        store_ = context.cast(builder, args[first + 3], signature.args[first + 3],
                              types.boolean)
        with builder.if_then(store_):
            builder.store(total, lanes_at, align=align)
        return builder.select(store_, ir.Constant(summed.type, 0), summed)

    return dtype(w, wo, v, vo, m, *extra, *carried), codegen


def _tail_loop(w, wo, v, vo, c, acc, extra, update):
    """tail_dot(_step) compiled: the c columns in one masked <LANES x dtype> load of each
    array (nothing past them is read), their products and steps as vector operations,
    then lane by lane, leaving after the c-th, the new weight stored and the product
    added to acc.  The scalar loop this replaces took eight instructions a column, and
    a 32-16-16-10 net's per-sample fit spent a quarter of its time there, in its rows of
    10.  The new weights go one by one: AVX2's masked store is microcode on Zen 3.
    Written in few LLVM instructions (a splat as one insert and one shuffle): the
    per-sample kernels' backward_rows, which reaches this through rules.row_dot_step,
    is specialized to a generated kernel's constant sizes only while it stays small
    (sample_units.backward_rows)."""
    ok = _float_arrays(w, v) and all(isinstance(t, types.Integer) for t in (wo, vo, c))
    ok = ok and all(isinstance(t, types.Float) for t in (acc,) + extra)
    if not ok:
        return None
    dtype = w.dtype
    wide = types.float64 if any(t == types.float64 for t in extra[1:]) else dtype

    def codegen(context, builder, signature, args):
        i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
        make, suffix = _LLVM_FLOAT[dtype]
        scalar, vec = make(), ir.VectorType(make(), LANES)
        wide_vec = ir.VectorType(_LLVM_FLOAT[wide][0](), LANES)
        mask_type = ir.VectorType(i1, LANES)
        align = ir.Constant(i32, dtype.bitwidth // 8)
        wo_, vo_, c_ = (context.cast(builder, args[k], signature.args[k], types.uint64)
                        for k in (1, 3, 4))
        total = cgutils.alloca_once_value(
            builder, context.cast(builder, args[5], signature.args[5], dtype))
        with builder.if_then(builder.icmp_unsigned(">", c_, ir.Constant(i64, 0))):
            w_at = _at(builder, _base(builder, context, signature.args[0], args[0], wo_),
                       ir.Constant(i64, 0), vec)
            v_at = _at(builder, _base(builder, context, signature.args[2], args[2], vo_),
                       ir.Constant(i64, 0), vec)
            lanes = ir.VectorType(i32, LANES)
            mask = builder.icmp_unsigned("<", ir.Constant(lanes, list(range(LANES))),
                                         _broadcast(builder, builder.trunc(c_, i32), lanes))
            masked_load = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec.as_pointer(), i32, mask_type, vec]),
                f"llvm.masked.load.v{LANES}{suffix}.p0")
            x, y = (builder.call(masked_load, [at, align, mask, ir.Constant(vec, None)])
                    for at in (w_at, v_at))
            products = builder.fmul(x, y)
            new = None
            if update:
                a = _broadcast(builder, context.cast(builder, args[6], signature.args[6],
                                                     dtype), vec)
                lr = _broadcast(builder, context.cast(builder, args[7], signature.args[7],
                                                      wide), wide_vec)
                new = _plain_steps(builder, x, y, a, lr)
            # lane by lane, leaving after the c-th: the new weight stored (AVX2's masked
            # store is microcode on Zen 3), the product added
            w_scalar = builder.bitcast(w_at, scalar.as_pointer())
            done = builder.append_basic_block("tail_done")
            for k in range(LANES):
                lane = ir.Constant(i64, k)
                if new is not None:
                    builder.store(builder.extract_element(new, lane),
                                  builder.gep(w_scalar, [lane]))
                builder.store(builder.fadd(builder.load(total),
                                           builder.extract_element(products, lane)), total)
                if k == LANES - 1:
                    builder.branch(done)
                else:
                    more = builder.append_basic_block(f"tail_{k + 1}")
                    builder.cbranch(builder.icmp_unsigned(">", c_, ir.Constant(i64, k + 1)),
                                    more, done)
                    builder.position_at_end(more)
            builder.position_at_end(done)
        return builder.load(total)

    return dtype(w, wo, v, vo, c, acc, *extra), codegen


def _broadcast(builder, value, vec):
    """``value`` in every lane of ``vec``: one insert and one shuffle (_splat makes an
    insert per lane)."""
    one = builder.insert_element(ir.Constant(vec, None), value, ir.Constant(ir.IntType(32), 0))
    return _shuffle(builder, one, one, [0] * vec.count)


@compiled_as(tail_dot)
def _tail_dot(typingctx, w, wo, v, vo, c, acc):
    return _tail_loop(w, wo, v, vo, c, acc, (), update=False)


@compiled_as(tail_dot_step)
def _tail_dot_step(typingctx, w, wo, v, vo, c, acc, a, lr):
    return _tail_loop(w, wo, v, vo, c, acc, (a, lr), update=True)


@compiled_as(lanes_dot)
def _lanes_dot(typingctx, w, wo, v, vo, m):
    return _lanes_loop(w, wo, v, vo, m, (), update=False)


@compiled_as(lanes_dot_step)
def _lanes_dot_step(typingctx, w, wo, v, vo, m, a, lr):
    return _lanes_loop(w, wo, v, vo, m, (a, lr), update=True)


@compiled_as(lanes_dot_step_carry)
def _lanes_dot_step_carry(typingctx, w, wo, v, vo, m, a, lr, carry, co, load, store):
    return _lanes_loop(w, wo, v, vo, m, (a, lr), update=True,
                       carried=(carry, co, load, store))


# ------------------------------------------------------------------------ address
def address(arr, offset):
    """A pointer to arr[offset] (arr a 1-D float array, or a pointer to floats: then the
    pointer ``offset`` elements on; offset not checked).  The caller must hold arr while
    the pointer is in use: an argument is held by its caller; an array allocated where
    the pointer is taken is freed after its last use, so call hold(arr) after the
    pointer's.  In Python: the view arr[offset:]."""
    return arr[int(offset):]


@compiled_as(address)
def _address(typingctx, arr, offset):
    floats = (types.float64, types.float32)
    is_array = isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype in floats
    is_pointer = isinstance(arr, types.CPointer) and arr.dtype in floats
    if not ((is_array or is_pointer) and isinstance(offset, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        if is_pointer:
            data = args[0]
        else:
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        return builder.gep(data, [index])

    return types.CPointer(arr.dtype)(arr, offset), codegen


def hold(arr):
    """Nothing.  Compiled, a use of ``arr`` where the call stands: Numba frees an array
    that a kernel allocated after the array's last use, which may come before the last
    use of a pointer taken from it (``address``); hold(arr) after that keeps the array
    alive until then."""


@compiled_as(hold)
def _hold(typingctx, arr):
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, signature, args):
        return context.get_dummy_value()

    return types.none(arr), codegen


# ------------------------------------------------------------------------ borrowed
def borrowed(values):
    """The tuple ``values`` with every array in it a view that Numba does not
    reference-count (compiled: _borrowed); in Python, the values themselves."""
    return values


def _strip(context, builder, typ, value):
    """value with every array in it (also inside tuples and namedtuples) a view
    without a meminfo, the rest as it is."""
    if isinstance(typ, types.Array):
        src = context.make_array(typ)(context, builder, value)
        view = context.make_array(typ)(context, builder)
        context.populate_array(view, data=src.data, shape=src.shape, strides=src.strides,
                               itemsize=src.itemsize, meminfo=None)
        return view._getvalue()
    if isinstance(typ, types.BaseTuple):
        out = value
        for i, member in enumerate(typ.types):
            out = builder.insert_value(
                out, _strip(context, builder, member, builder.extract_value(value, i)), i)
        return out
    return value


@compiled_as(borrowed)
def _borrowed(typingctx, values):
    """borrowed compiled: every array of ``values`` a view without a meminfo.  Every view of an array that Numba counts (a slice, an array passed
    to a function that is not inlined) adds and later removes a reference with an
    atomic instruction, which orders the memory accesses around it -- in a training
    loop that takes views every epoch or batch, a measurable share of a small
    network's fit (docs/PERFORMANCE-HISTORY.md).  The caller must hold the arrays while the
    views are in use (a kernel's arguments are held by its caller)."""
    if not isinstance(values, types.BaseTuple):
        return None

    def codegen(context, builder, signature, args):
        return _strip(context, builder, signature.args[0], args[0])

    return values(values), codegen



# ------------------------------------------------------------------ libm, in x's precision
@functools.cache
def _libm_float32(name):
    """libm's float32 function ``name`` through ctypes, found on first use (None where no
    libm is found: then the Python meaning rounds the float64 result, which may differ
    in the last bit)."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("m")), name)
    except (OSError, AttributeError, TypeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return fn


def _in_precision(x, float64_fn, float32_name):
    if isinstance(x, np.float32):
        float32_fn = _libm_float32(float32_name)
        return np.float32(float32_fn(float(x)) if float32_fn else float64_fn(float(x)))
    return float64_fn(x)


def python_exp(x):
    """e**x in x's precision, as compiled: libm's expf for a float32, exp otherwise."""
    return _in_precision(x, math.exp, "expf")


# Compiled, the kernels call math.exp themselves: an @overload would be inlined at each
# call site, which made a per-sample first fit 0.3-0.5 s slower to compile.
exp = python_exp if config.DISABLE_JIT else math.exp
