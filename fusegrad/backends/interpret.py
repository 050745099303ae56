"""target="interpret": the graph run op by op by the NumPy interpreter (ir/interpret.py), the
oracle every compiled result is tested against. Nothing is compiled; source() shows the code the
CPU target would generate for the same graph."""
from __future__ import annotations

import numpy as np

from ..ir import interpret
from . import Backend


class InterpretBackend(Backend):
    name = "interpret"
    updates_in_place = False  # updated parameters come back as outputs

    def __init__(self, job):
        super().__init__(job)
        self._outputs: list = []

    def run(self, inputs) -> bool:
        job = self.job
        self._outputs = interpret(job.graph, [np.asarray(x) for x in inputs])
        return job.guard is None or bool(np.all(np.isfinite(self._outputs[job.guard])))

    def output(self, k, copy=True):
        return np.array(self._outputs[k], copy=True) if copy else self._outputs[k]

    def source(self) -> str:
        from .cpu import CpuBackend

        return ("# target='interpret' runs the graph op by op; this is what target='cpu' "
                "would compile for it\n" + CpuBackend(self.job).source())
