"""The one table that maps activation, loss and init names to what the kernels use."""
from . import kernels as K

ACTIVATIONS = {
    "identity": K.IDENTITY,
    "sigmoid": K.SIGMOID,
    "relu": K.RELU,
    "tanh": K.TANH,
}

LOSSES = {
    "mse": K.MSE,
    "half_mse": K.HALF_MSE,
    "sse": K.SSE,
    "bce": K.BCE,
}

INITS = ("uniform", "normal", "xavier", "he")

DTYPES = ("float64", "float32")
