"""fastbp.kernels: Numba-compiled building blocks. Arrays in, arrays out; imports only
numpy and numba, never fastbp.  See DESIGN.md for the flat parameter layout."""
from . import startup  # first: before anything sets up Numba's CPU target
from .activations import IDENTITY, RELU, SIGMOID, SOFTMAX, TANH, activate_inplace, exp_into, \
    mul_derivative_inplace, sigmoid_inplace, softmax_inplace
from . import blas
from .bounds import layer_norms
from .config import PRODUCT_MIN_WORK, JIT
from .dense import backward, forward
from .losses import BCE, CROSS_ENTROPY, HALF_MSE, MSE, SSE, batch_loss, output_delta
from . import optim
from .rng import next_u64, permutation_into, seed_state
from .train import activation_offsets, all_finite, allocate_workspace, default_config, \
    eval_loss, gather_columns, loss_and_gradient, make_workspace, predict_into, \
    scatter_columns, train, train_epochs, weighted_loss_and_gradient
from .ensemble import predict_many, train_many
from .lanes import LANES, eligible as lanes_eligible, train_blocks
