"""The one table that maps activation, loss and init names to what the kernels use."""
from .kernels import rules as K

ACTIVATIONS = {
    "identity": K.IDENTITY,
    "sigmoid": K.SIGMOID,
    "relu": K.RELU,
    "tanh": K.TANH,
    "softmax": K.SOFTMAX,   # output layer only, with the cross_entropy loss
    "exp": K.EXP,           # output layer only, with the poisson loss
}

LOSSES = {
    "mse": K.MSE,
    "half_mse": K.HALF_MSE,
    "sse": K.SSE,
    "bce": K.BCE,
    "cross_entropy": K.CROSS_ENTROPY,
    "poisson": K.POISSON,
}

INITS = ("uniform", "normal", "xavier", "he")

DTYPES = ("float64", "float32")
