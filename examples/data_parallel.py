"""Data-parallel training on MPI: the digits MLP of digits_mlp.py, each batch split over processes.

    pip install 'fusegrad[mpi,examples]'
    mpiexec -n 2 python -m mpi4py examples/data_parallel.py

Every process runs this same script. The step is made with comm=: its first call starts every
process from rank 0's parameters, each process trains on its own shard of each batch (fg.fit
shards them), and the compiled step sums the gradients over the processes (one MPI_Allreduce),
so every process applies the same update and the parameters stay identical, bit for bit. The
losses printed are the job's. `python -m mpi4py` makes an exception on one process abort the
whole job instead of leaving the others waiting for it.

With several processes on one machine, give each one BLAS thread (OMP_NUM_THREADS=1,
OPENBLAS_NUM_THREADS=1, set below before NumPy loads); across machines, list them in a
hostfile: mpiexec -f hosts -n 8 python -m mpi4py examples/data_parallel.py
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before NumPy / SciPy start their BLAS
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

try:
    import fusegrad as fg
except ImportError:  # run from a checkout without installing
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import fusegrad as fg

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()

# every process loads the same data and draws the same shuffles (same seed): fit then gives
# each process its rows of each batch
digits = load_digits()
x = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int64)
rng = np.random.default_rng(0)
order = rng.permutation(len(x))
x_train, y_train = x[order[:1400]], y[order[:1400]]
x_test, y_test = x[order[1400:]], y[order[1400:]]


def init(sizes=(64, 128, 128, 10), seed=rank):
    """Each process draws its own (different) start: the step's first call replaces them all
    by rank 0's."""
    r = np.random.default_rng(seed)
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"w{i}"] = (r.normal(size=(n_in, n_out)) * np.sqrt(2 / n_in)).astype(np.float32)
        params[f"b{i}"] = np.zeros(n_out, np.float32)
    return params


def model(params, x):
    h = fg.relu(x @ params["w0"] + params["b0"])
    h = fg.relu(h @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


@fg.train_step(optimizer=fg.optim.Adam(lr=3e-3), comm=comm)
def step(params, x, y):
    return fg.cross_entropy(model(params, x), y)


predict = fg.jit(model)


def accuracy(params):
    return float(np.mean(np.argmax(predict(params, x_test), axis=1) == y_test))


def batches(batch_size=100):
    """One epoch of shuffled batches of the whole job (fg.fit shards each over the processes)."""
    for idx in np.split(rng.permutation(len(x_train)), len(x_train) // batch_size):
        yield x_train[idx], y_train[idx]


params = init()
history = fg.fit(step, params, batches, epochs=8, eval_fn=accuracy)  # progress on rank 0 only
same = fg.distributed.same_on_every_process(params, comm)
step.save("digits_data_parallel.npz", params)  # written by rank 0; every process waits for it
if rank == 0:
    print(f"{size} processes; loss per epoch:",
          " ".join(f"{loss:.3f}" for loss in history["epoch_loss"]))
    print(f"samples/s: {history['samples_per_second']:,.0f}; parameters identical on every "
          f"process: {same}; test accuracy: {accuracy(params):.3f}")
