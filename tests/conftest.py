"""Suite-wide settings.

FUSEGRAD_VERIFY=1: the pass manager runs the verifier after every pass, so a pass that breaks a
graph fails the test that compiled it, naming the pass.

FUSEGRAD_TARGET=interpret: tests that check the IR, tracing, autodiff, optimizers and training
semantics run on the reference interpreter; the Numba backend is the product's default and is
tested against that interpreter in test_cpu_backend.py / test_cpu_cache.py, which ask for
target="cpu" explicitly. (Compiling every small graph of the semantic tests with Numba would
cost more than the rest of the suite together.)
"""
import os

os.environ.setdefault("FUSEGRAD_VERIFY", "1")
os.environ.setdefault("FUSEGRAD_TARGET", "interpret")
