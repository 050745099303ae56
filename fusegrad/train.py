"""fg.train_step: one compiled call runs forward, backward and the optimizer update.

    step = fg.train_step(loss_fn, fg.optim.Adam(lr=1e-3))
    loss = step(params, x, y)      # params (a pytree of NumPy arrays) are updated in place

Optimizer state lives in the step object (`step.state`), checkpoints with `step.save/load`.
A loss function with a `key` keyword gets a fresh counter-based random key every step,
reproducible from `seed`, so fg.dropout works inside compiled training.

With `comm=` (an mpi4py communicator) the step is data-parallel: every process passes its own
shard of the batch, the compiled step sums the gradients over the processes (fusegrad/
distributed.py, compiler/data_parallel.py) and every process applies the same update.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
import signal
import threading

import numpy as np

from .backend import Runner, check_target, compiling
from .compiler.step import StepGraph, build_step_graph
from .compiler.trace import arg_names, graph_inputs, signature_key, signature_of
from .device import copy_into, device_put, is_device_array, to_numpy, zeros
from .inspection import Inspection
from .ir.types import TensorType
from .pytree import flatten, leaf_paths, unflatten
from .runtime.files import write_atomic

log = logging.getLogger("fusegrad")



class NonFiniteLossError(FloatingPointError):
    """The loss of a step was inf or nan; the step's update was not applied."""


class NonFiniteGradientError(FloatingPointError):
    """The loss of a step was finite but a gradient had an inf or nan; the step's update was
    not applied. `.parameters` names the parameters whose gradients were not finite."""

    def __init__(self, message, parameters=()):
        super().__init__(message)
        self.parameters = list(parameters)


class CheckpointError(ValueError):
    """A checkpoint that does not fit this step and its parameters; nothing was changed."""


class _Uninterruptible:
    """Ctrl-C held back while a step writes parameters and counts itself, so a step is all or
    nothing: the KeyboardInterrupt arrives when the block ends, after `step.t` has advanced
    with the parameters. (A native call cannot be interrupted anyway; this closes the gap
    between it and the bookkeeping after it.)

    Python runs signal handlers in the main thread, whichever thread the OS delivered the
    signal to, so blocking the signal in one thread is not enough: on the first step in the
    main thread a handler is installed in front of the one in place (Python's default, or the
    user's), which defers the signal while a step is in progress and passes it on otherwise.
    Costs two counter updates per step."""

    depth = 0
    pending = False
    previous = None
    installed = False

    def __enter__(self):
        cls = _Uninterruptible
        if threading.current_thread() is threading.main_thread():
            if not cls.installed:
                cls._install()
            cls.depth += 1
        return self

    def __exit__(self, *exc):
        cls = _Uninterruptible
        if threading.current_thread() is threading.main_thread():
            cls.depth -= 1
            if cls.depth == 0 and cls.pending:
                cls.pending = False
                cls.previous(signal.SIGINT, None)  # the default raises KeyboardInterrupt

    @classmethod
    def _install(cls):
        cls.installed = True
        current = signal.getsignal(signal.SIGINT)
        if callable(current):  # Python's default handler, or the user's
            cls.previous = current
            signal.signal(signal.SIGINT, cls._handle)

    @classmethod
    def _handle(cls, signum, frame):
        if cls.depth:
            cls.pending = True
        else:
            cls.previous(signum, frame)


def _batch_problem(path, arg) -> str | None:
    """Why a batch argument cannot be what it looks like, or None."""
    if isinstance(arg, str):
        return f"{path} is a str; batch arguments are arrays (or Python numbers for flags)"
    if isinstance(arg, (list, tuple)):
        leaves, _ = flatten(arg)
        if len(leaves) > 1 and all(isinstance(x, (bool, int, float)) for x in leaves):
            return (f"{path} is a {type(arg).__name__} of numbers; fusegrad treats lists and "
                    f"tuples as containers of separate compile-time constants, so every batch "
                    f"would compile anew. Pass an array: np.asarray({path})")
    return None


def step_key(seed: int, t: int, rank: int = 0) -> np.int64:
    """The random key of step t: distinct for every (seed, step), the same on every run; in a
    data-parallel job each process's rank is folded in, so shards draw different dropout
    masks (rank 0's keys are a single process's)."""
    key = ((int(seed) & 0x7FFFFFFF) << 32) | (int(t) & 0xFFFFFFFF)
    key = (key + int(rank) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    return np.int64(key - (1 << 64) if key >= 1 << 63 else key)


def _trainable_mask(trainable, params) -> list[bool]:
    leaves, tree = flatten(params)
    paths = leaf_paths(tree, "params")
    if trainable is None:
        mask = [True] * len(leaves)
    elif callable(trainable):
        mask = [bool(trainable(path, x)) for path, x in zip(paths, leaves)]
    else:
        t_leaves, t_tree = flatten(trainable)
        if t_tree != tree:
            raise ValueError("trainable= must be a pytree of booleans with the structure of "
                             "params (or a predicate (path, array) -> bool)")
        mask = [bool(t) for t in t_leaves]
    # integer leaves (counters, indices) are carried, never trained
    return [m and np.dtype(x.dtype if is_device_array(x) else np.asarray(x).dtype).kind == "f"
            for m, x in zip(mask, leaves)]


class TrainStep(Inspection):
    """A compiled training step. Call it as `step(params, *batch)`; `ir`, `source`, `stats`,
    `memory_plan` and `dump` show what was compiled (inspection.py)."""

    WHOLE = "step"  # the traced step: forward, backward and the optimizer's update
    PARTS = ("forward", "backward", "update")

    def __init__(self, loss_fn, optimizer, has_aux=False, trainable=None, seed=0,
                 target=None, remat="none", comm=None):
        functools.update_wrapper(self, loss_fn)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.has_aux = has_aux
        self.trainable = trainable
        self.seed = int(seed)
        self.target = check_target(target)
        from .compiler.pipeline import REMAT

        if remat not in REMAT:
            raise ValueError(f"remat must be one of {REMAT}, got {remat!r}")
        self.remat = remat
        # runtime scalars live in arrays the compiled step reads each call (no allocation)
        self._lr = np.zeros((), np.float64)
        self._lr_vectors: dict = {}  # id(step graph) -> its per-parameter learning rates
        self._t = np.zeros((), np.int64)
        self._key = np.zeros((), np.int64)
        self._runners: dict = {}
        self._timings: dict = {}  # id(step graph) -> seconds of trace / autodiff / optimizer
        self.name = getattr(loss_fn, "__name__", "loss")
        try:
            self.takes_key = "key" in inspect.signature(loss_fn).parameters
        except (TypeError, ValueError):
            self.takes_key = False
        self.t = 0  # steps taken
        self._programs: dict = {}
        self._last: StepGraph | None = None
        self._param_tree = None
        self._slots: dict | None = None  # slot -> list over param leaves (None if not trained)
        self._params = None  # the pytree last trained (for save())
        self._param_specs = None  # (shape, dtype) of every parameter leaf, fixed at first call
        self.comm = None  # data-parallel: fusegrad.distributed.Communicator
        self._samples = np.zeros((), np.float64)  # this process's samples in the step
        self._synchronized = False  # data-parallel: rank 0's start broadcast yet?
        if comm is not None:
            from .distributed import communicator

            self.comm = communicator(comm)

    # ---- compilation ----
    def _program(self, params, batch, flat=None) -> StepGraph:
        """The step graph for this call's signature; `flat` = flatten((params,) + batch) when
        the caller has it (a step flattens its arguments once)."""
        key = signature_of(*flat) if flat is not None else signature_key((params,) + batch)
        prog = self._programs.get(key)
        if prog is None:
            names = ["params"] + arg_names(self.loss_fn, 1 + len(batch))[1:]
            for name, arg in zip(names[1:], batch):
                problem = _batch_problem(name, arg)
                if problem:
                    raise TypeError(f"{self.name}: {problem}")
            if self._programs:
                log.info("fusegrad: %s compiles again for a new signature", self.name)
            mask = _trainable_mask(self.trainable, params)
            leaves, tree = flatten(params)
            # per-parameter hyper-parameters, evaluated once per leaf
            optimizers = [self.optimizer.for_parameter(path, x) if m else None
                          for path, x, m in zip(leaf_paths(tree, "params"), leaves, mask)]
            timings: dict = {}
            with compiling():
                prog = build_step_graph(self.loss_fn, self.optimizer, (params,) + batch, mask,
                                        self.has_aux, self.takes_key, self.name, timings=timings,
                                        leaf_optimizers=optimizers,
                                        handle_bits=self.comm and self.comm.handle_bits)
            self._programs[key] = prog
            self._timings[id(prog)] = timings
        self._last = prog
        return prog

    def _check_params(self, params):
        """The leaves of `params`, checked before anything is compiled or written; remembers
        the structure (the optimizer state is kept for it)."""
        leaves, tree = flatten(params)
        if self._param_tree is not None and tree != self._param_tree:
            raise ValueError("this train_step holds optimizer state for parameters of another "
                             "structure; make a new train_step for a new model")
        for k, x in enumerate(leaves):
            if is_device_array(x):  # fg.device_put: updated in place on the device
                if self.target != "cuda":
                    path = leaf_paths(tree, "params")[k]
                    raise TypeError(f"{path} is a device array (fg.device_put) but this "
                                    f"train_step runs on target={self.target!r}: make it with "
                                    f"target='cuda', or pass fg.to_numpy(params)")
                continue
            if not isinstance(x, np.ndarray) or not x.flags.writeable:
                path = leaf_paths(tree, "params")[k]  # names only when there is an error
                got = "a read-only array" if isinstance(x, np.ndarray) else type(x).__name__
                raise TypeError(f"{path} must be a writable NumPy array: train_step updates "
                                f"parameters in place (got {got})")
        specs = self._param_specs
        if specs is None:
            self._param_specs = [(tuple(x.shape), np.dtype(x.dtype)) for x in leaves]
        else:
            for k, (x, (shape, dtype)) in enumerate(zip(leaves, specs)):
                if x.shape != shape or x.dtype != dtype:
                    path = leaf_paths(tree, "params")[k]
                    raise ValueError(
                        f"{path}: this train_step was initialised for {dtype}{list(shape)}, got "
                        f"{np.dtype(x.dtype)}{list(x.shape)}. Its optimizer state has the first "
                        f"shapes; to train parameters of other shapes or dtypes, make a new "
                        f"fg.train_step")
        self._param_tree = tree
        return leaves

    def _init_state(self, leaves, prog: StepGraph):
        if self._slots is None:
            spec = {prog.traced.array_leaves[k]: specs
                    for k, specs in zip(prog.trained, prog.slot_specs)}
            self._slots = {s: [None] * len(leaves) for s in prog.slots}
            for i, specs in spec.items():
                for s, (shape, dtype, initial) in specs.items():
                    # where the step runs: on the device for target="cuda"; C order
                    x = zeros(shape, dtype, self.target)
                    if initial:
                        copy_into(x, np.full(shape, initial, dtype))
                    self._slots[s][i] = x

    # ---- running ----
    def _inputs(self, params, batch):
        """(step graph, its inputs for the next step, parameter leaves, trained leaves, t)."""
        leaves = self._check_params(params)
        flat = flatten((params,) + batch)
        prog = self._program(params, batch, flat)
        self._init_state(leaves, prog)
        t = self.t + 1
        # the key is the traced function's last argument, or its last input (build_step_graph)
        if prog.takes_key:
            self._key[()] = step_key(self.seed, t, self.comm.rank if self.comm else 0)
        inputs = graph_inputs(prog.traced, leaves=flat[0] + ([self._key] if self.takes_key
                                                             else []))
        if prog.traced.implicit_key:
            inputs.append(self._key)
        if self.comm is not None:  # compiler/step.py: samples and the MPI handles
            inputs += [self._samples, self.comm.handles]
        trained_leaves = [prog.traced.array_leaves[k] for k in prog.trained]
        for i in trained_leaves:
            inputs += [self._slots[s][i] for s in prog.slots]
        inputs += [self._learning_rates(prog, t), self._t]
        self._t[()] = t
        return prog, inputs, leaves, trained_leaves, t

    def _learning_rates(self, prog: StepGraph, t: int) -> np.ndarray:
        """The step's "lr" input for step t: one learning rate, or one per trained parameter
        (schedules evaluated at t)."""
        if prog.lrs is None:
            lr = self.optimizer.lr
            self._lr[()] = lr(t) if callable(lr) else lr
            return self._lr
        rates = self._lr_vectors.get(id(prog))
        if rates is None:
            rates = self._lr_vectors[id(prog)] = np.zeros(len(prog.lrs), np.float64)
        rates[:] = [lr(t) if callable(lr) else lr for lr in prog.lrs]
        return rates

    def __call__(self, params, *batch, samples=None):
        """One step on this batch; returns its loss. Data-parallel (comm=): the batch is this
        process's shard, `samples` its number of samples (default: the first dimension of the
        first batch array), which weighs its loss and gradients in the job's means; the loss
        returned is the job's."""
        if self.comm is not None:
            self._samples[()] = _samples_of(batch) if samples is None else float(samples)
            if not self._synchronized:
                self._synchronize(params, batch)
        prog, inputs, leaves, trained_leaves, t = self._inputs(params, batch)
        runner = self._runner(prog)
        self._last_inputs = inputs
        n_aux = prog.aux_tree.num_leaves if self.has_aux else 0
        in_place = runner.updates_in_place  # the compiled step writes params and state itself
        with _Uninterruptible():  # the update and the count of steps go together
            ok, outs = runner.run(inputs, want=range(1 + n_aux) if in_place else None)
            loss = outs[0]
            if ok:
                if not in_place:
                    self._commit(prog, leaves, outs, trained_leaves)
                self.t = t
                self._params = params
        if not ok:
            kept = ("the update was not applied, so the parameters and optimizer state are "
                    "those from before this step")
            if np.all(np.isfinite(loss)):
                bad = [name for k, name in prog.grad_checks
                       if not np.isfinite(runner.output(k) if in_place else outs[k])]
                raise NonFiniteGradientError(
                    f"{self.name}: at step {t} the loss is finite ({loss}) but the gradient of "
                    f"{', '.join(bad) or 'a parameter'} is not (inf or nan); {kept}", bad)
            raise NonFiniteLossError(f"{self.name}: the loss is {loss} at step {t}; {kept}")
        loss = loss[()]
        if self.has_aux:
            return loss, unflatten(prog.aux_tree, outs[1:1 + n_aux])
        return loss

    def _synchronize(self, params, batch):
        """Data-parallel: every process starts from rank 0's parameters, optimizer state and
        step count (all processes call this on their first step, or their first after load)."""
        from .distributed import broadcast

        leaves = self._check_params(params)
        self._init_state(leaves, self._program(params, batch, flatten((params,) + batch)))
        broadcast(params, self.comm)
        state = [x for values in self._slots.values() for x in values if x is not None]
        broadcast(state, self.comm)
        self.t = self.comm.broadcast_value(self.t)
        self._synchronized = True

    def _runner(self, prog) -> Runner:
        r = self._runners.get(id(prog))
        if r is None:
            r = self._runners[id(prog)] = Runner(prog.graph, self.target, guard=prog.guard,
                                                 remat=self.remat,
                                                 phases=self._timings.get(id(prog)))
        return r

    def _commit(self, prog, leaves, outs, trained_leaves):
        graph = prog.graph
        n_slots = len(prog.slots)
        out_of_input = {i: o for o, i in graph.aliases}
        for j, (k, leaf) in enumerate(zip(prog.trained, trained_leaves)):
            np.copyto(leaves[leaf], outs[out_of_input[k]])
        for o, k in prog.assigned:  # buffers (fg.assign)
            np.copyto(leaves[prog.traced.array_leaves[k]], outs[o])
        first_state = len(graph.inputs) - 2 - n_slots * len(trained_leaves)
        for j, leaf in enumerate(trained_leaves):
            for s_i, s in enumerate(prog.slots):
                k = first_state + j * n_slots + s_i
                self._slots[s][leaf] = outs[out_of_input[k]]

    # ---- inspection (the rest is inspection.Inspection) ----
    def _require(self) -> StepGraph:
        if self._last is None:
            raise RuntimeError("the step has not been compiled yet: call it once first")
        return self._last

    def _inspected(self):
        prog = self._require()
        return prog.graph, self._runner(prog)

    def profile(self, params, *batch, repeats=5) -> list:
        """Time every kernel call of the compiled step on this batch: [(what it computes,
        seconds), ...], the median of `repeats` runs. It runs on copies of the parameters and
        optimizer state: `params`, the state and `step.t` are left as they were. A
        data-parallel step's all-reduce is a collective call: profile on every process."""
        prog, inputs, _, _, _ = self._inputs(params, batch)
        runner = self._runner(prog)
        written = {i for _, i in prog.graph.aliases}
        copies = [np.array(to_numpy(x), copy=True) if k in written else x
                  for k, x in enumerate(inputs)]
        if self.target == "cuda":
            copies = [device_put(x) if k in written else x for k, x in enumerate(copies)]
        return runner.profile(copies, repeats)

    @property
    def state(self) -> dict:
        """Optimizer state: {"step": t, slot: pytree like params (None where not trained)}."""
        out = {"step": self.t}
        if self._slots is not None:
            for s, values in self._slots.items():
                out[s] = unflatten(self._param_tree, values)
        return out

    # ---- checkpoints ----
    def save(self, path, params=None):
        """Write the parameters, optimizer state, step count and seed to the .npz file `path`
        (exactly that name). Atomic: the file is written beside it under a temporary name,
        flushed to disk, then renamed over `path`, so an interrupted save leaves the previous
        checkpoint whole."""
        params = self._params if params is None else params
        arrays = {"__step__": np.int64(self.t), "__seed__": np.int64(self.seed)}
        if params is not None:
            leaves, tree = flatten(params)
            for p, x in zip(leaf_paths(tree, "params"), leaves):
                arrays[f"param:{p}"] = to_numpy(x)
        if self._slots is not None:
            paths = leaf_paths(self._param_tree, "params")
            for s, values in self._slots.items():
                for p, x in zip(paths, values):
                    if x is not None:
                        arrays[f"{s}:{p}"] = to_numpy(x)
        if self.comm is None or self.comm.rank == 0:  # data-parallel: one writer, then all meet
            write_atomic(path, lambda f: np.savez(f, **arrays), sync=True)
        if self.comm is not None:
            self.comm.barrier()

    def load(self, path, params=None):
        """Restore a checkpoint written by save(): parameters are copied into `params` in place,
        the optimizer state, step count and seed into this step. The whole file is checked
        first (every parameter and state entry present, with the shapes and dtypes of the
        parameters, nothing else): a checkpoint that does not fit raises CheckpointError and
        changes nothing."""
        path = os.fspath(path)
        if not os.path.exists(path) and os.path.exists(path + ".npz"):
            path += ".npz"  # written by np.savez-style naming
        with np.load(path, allow_pickle=False) as f:  # data only: never unpickle
            data = {k: f[k] for k in f.files}
        plan = self._checked_checkpoint(path, data, params)
        with _Uninterruptible():
            for x, value in plan["params"]:
                copy_into(x, value)
            if params is not None:
                self._params = params
            if plan["slots"] is not None:
                self._slots = plan["slots"]
            self.t, self.seed = plan["step"], plan["seed"]
            self._synchronized = False  # data-parallel: the next step starts from rank 0's

    def _checked_checkpoint(self, path, data, params) -> dict:
        """Everything load() will write, checked against this step and `params`."""
        def fail(why):
            raise CheckpointError(f"checkpoint {path}: {why}; nothing was loaded")

        step, seed = data.get("__step__"), data.get("__seed__")
        if step is None or seed is None or step.shape != () or step.dtype.kind != "i":
            fail("no step count (__step__) or seed: not written by train_step.save")
        plan = {"step": int(step), "seed": int(seed), "params": [], "slots": None}
        if int(step) < 0:
            fail(f"a negative step count {int(step)}")
        saved_params = {k[len("param:"):]: v for k, v in data.items() if k.startswith("param:")}
        if params is not None:
            leaves, tree = flatten(params)
            self._check_params(params)
            paths = leaf_paths(tree, "params")
            missing = [p for p in paths if p not in saved_params]
            extra = sorted(set(saved_params) - set(paths))
            if missing or extra:
                fail(f"its parameters are not these: missing {missing}, unknown {extra}")
            for p, x in zip(paths, leaves):
                value = saved_params[p]
                if value.shape != tuple(x.shape) or value.dtype != np.dtype(x.dtype):
                    fail(f"{p} is {value.dtype}{list(value.shape)} there, "
                         f"{np.dtype(x.dtype)}{list(x.shape)} here")
                plan["params"].append((x, value))
        else:
            leaves, tree = (None, self._param_tree)
        slot_names = sorted({k.split(":", 1)[0] for k in data
                             if not k.startswith(("__", "param:"))})
        if not slot_names and not self.optimizer.slots:
            return plan
        if set(slot_names) != set(self.optimizer.slots):
            fail(f"its optimizer state has slots {slot_names}, {type(self.optimizer).__name__} "
                 f"needs {sorted(self.optimizer.slots)}")
        if tree is None or (leaves is None and self._params is None):
            raise RuntimeError("pass params= to load() (or call the step once) so the state "
                               "can be matched to the parameters")
        paths = leaf_paths(tree, "params")
        specs = self._param_specs or [(tuple(x.shape), np.dtype(x.dtype)) for x in leaves]
        trained = self._trained_paths(tree, leaves if leaves is not None else self._params)
        slots = {}
        for s in slot_names:
            values = []
            for p, (shape, dtype) in zip(paths, specs):
                value = data.get(f"{s}:{p}")
                if p not in trained:
                    if value is not None:
                        fail(f"{s} has state for {p}, which is not trained")
                    values.append(None)
                    continue
                if value is None:
                    fail(f"{s} has no state for {p}")
                want, _ = self.optimizer.slot_spec(s, TensorType(str(dtype), tuple(shape)))
                if value.shape != tuple(want.shape) or value.dtype != np.dtype(want.dtype):
                    fail(f"{s}:{p} is {value.dtype}{list(value.shape)}, it must be "
                         f"{want.dtype}{list(want.shape)}")
                values.append(np.ascontiguousarray(value))
            slots[s] = values
        if self.target == "cuda":  # state lives on the device
            slots = {s: device_put(v) for s, v in slots.items()}
        plan["slots"] = slots
        return plan

    def _trained_paths(self, tree, params) -> set:
        leaves = params if isinstance(params, list) else flatten(params)[0]
        mask = _trainable_mask(self.trainable, unflatten(tree, leaves))
        return {p for p, m in zip(leaf_paths(tree, "params"), mask) if m}


def _samples_of(batch) -> float:
    """A shard's samples: the first dimension of its first array (1 without one)."""
    for x in flatten(batch)[0]:
        shape = getattr(x, "shape", ())
        if len(shape) >= 1:
            return float(shape[0])
    return 1.0


def train_step(loss_fn=None, optimizer=None, *, has_aux=False, trainable=None, seed=0,
               target=None, remat="none", comm=None):
    """Compile a training step; usable as fg.train_step(loss_fn, opt) or
    @fg.train_step(optimizer=opt). comm: an mpi4py communicator for data-parallel training
    (fusegrad/distributed.py)."""
    if optimizer is None and loss_fn is not None and not callable(loss_fn):
        loss_fn, optimizer = None, loss_fn
    if optimizer is None:
        raise TypeError("train_step needs an optimizer, e.g. fg.optim.Adam(lr=1e-3)")
    if loss_fn is None:
        return lambda f: TrainStep(f, optimizer, has_aux, trainable, seed, target, remat, comm)
    return TrainStep(loss_fn, optimizer, has_aux, trainable, seed, target, remat, comm)
