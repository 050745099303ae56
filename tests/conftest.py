"""Suite-wide settings. FUSEGRAD_VERIFY=1: the pass manager runs the verifier after every pass,
so a pass that breaks a graph fails the test that compiled it, naming the pass."""
import os

os.environ.setdefault("FUSEGRAD_VERIFY", "1")
