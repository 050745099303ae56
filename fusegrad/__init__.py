"""fusegrad: a compiler for neural-network training steps.

    import fusegrad as fg
    step = fg.train_step(loss_fn, fg.optim.Adam(lr=1e-3))
    loss = step(params, x, y)       # forward + backward + update, parameters updated in place
"""
from .api import grad, jit, value_and_grad
from .device import device_put, to_numpy
from .gradcheck import GradientCheckError, check_grads
from . import distributed, optim
from .ir.interpret import IndexOutOfRangeError
from .train import (CheckpointError, NonFiniteGradientError, NonFiniteLossError, TrainStep,
                    train_step)
from .fit import fit
from .plot import plot_history
from .runtime.threads import get_num_threads, set_num_threads
from .ops import *  # noqa: F401,F403  the NumPy-like op namespace
from .ops import __all__ as _ops_all

__version__ = "0.1.0"
__all__ = ["jit", "grad", "value_and_grad", "check_grads", "GradientCheckError", "optim",
           "distributed",
           "train_step", "TrainStep", "NonFiniteLossError", "NonFiniteGradientError",
           "CheckpointError", "IndexOutOfRangeError", "fit", "plot_history", "get_num_threads",
           "set_num_threads", "device_put", "to_numpy", *_ops_all]
