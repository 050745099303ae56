"""Suite-wide settings (fusegrad/config.py lists them all).

FUSEGRAD_VERIFY=1: the verifier runs after every pass and on the fused graph, so a pass that
breaks a graph fails the test that compiled it, naming the pass.

The whole suite runs on the product's default target, the Numba CPU backend, with
FUSEGRAD_CROSSCHECK=1: every compiled run is also run on the reference interpreter and compared
(crosscheck.check in fusegrad/crosscheck.py), so every end-to-end test checks the generated code
against the oracle as well as its own expectations.
"""
import os

os.environ.setdefault("FUSEGRAD_VERIFY", "1")
os.environ.setdefault("FUSEGRAD_TARGET", "cpu")
os.environ.setdefault("FUSEGRAD_CROSSCHECK", "1")
