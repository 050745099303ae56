"""Suite-wide settings.

FUSEGRAD_VERIFY=1: the pass manager runs the verifier after every pass, so a pass that breaks a
graph fails the test that compiled it, naming the pass.

The whole suite runs on the product's default target, the Numba CPU backend, with
FUSEGRAD_CROSSCHECK=1: every compiled run is also run on the reference interpreter and compared
(backend.check_against_interpreter), so every end-to-end test checks the generated code against
the oracle as well as its own expectations.
"""
import os

os.environ.setdefault("FUSEGRAD_VERIFY", "1")
os.environ.setdefault("FUSEGRAD_TARGET", "cpu")
os.environ.setdefault("FUSEGRAD_CROSSCHECK", "1")
