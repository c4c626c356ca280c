"""fastbp.kernels: the compiled core.  Arrays and named structures in, arrays out; imports
only numpy, numba and llvmlite, never fastbp.  See DESIGN.md for the flat parameter
layout.

    rules.py     the math, each rule written once (activations, losses, deltas, sums,
                 updates); every kernel calls it
    options.py   the named structures the kernels take (Net, Data, Loop, Rule, Stop,
                 State, Work)
    batch.py     a batch through the network: forward, loss, backward, on rows
    passes.py    batch.py's passes compiled once per dtype, called by address
    sample.py    per-sample SGD, one update per sample fused into the backward pass
    loops.py     the training entries, one per kind of fit; predict; loss and gradient
    generate.py  kernels generated for one small architecture
    lanes.py     many models at once, in SIMD lanes across models
    gemm.py      the matrix products of wide layers, as units called by address
    tiles.py     the register-tiled gemm unit
    intrinsics.py  fma, bit casts and SIMD sums, each with its plain-Python meaning
    rng.py       the counter-based shuffling stream
    bounds.py    weight norms for the proof that a chunk cannot diverge
    cuda.py      the GPU kernel (imported only when asked for)
"""
from .rules import (BCE, CROSS_ENTROPY, EXP, HALF_MSE, IDENTITY, MSE, POISSON, RELU, SIGMOID,
                    SOFTMAX, SSE, TANH)
from .config import PRODUCT_MIN_WORK, JIT
from .rng import seed_state
