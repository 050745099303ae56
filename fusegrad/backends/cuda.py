"""target="cuda": Numba CUDA kernels and a generated Python driver, over one device arena.

compile() generates the module (compiler/codegen/cuda.py) from the middle end's Program and
loads it through the verified module cache (runtime/cuda.py); Numba compiles each kernel at its
first launch, so the first run's time is the kernel compile time.
"""
from __future__ import annotations

from . import Backend


class CudaBackend(Backend):
    name = "cuda"

    def __init__(self, job):
        super().__init__(job)
        self.code = None  # CudaCode
        self.build = None  # CudaBuild: the loaded module and its device memory

    def compile(self) -> None:
        from ..compiler.codegen.cuda import generate_cuda
        from ..kernels.cuda_config import launch_config
        from ..runtime.cuda import CudaBuild

        job = self.job
        self.code = job.timed("codegen", generate_cuda, job.program, launch_config(),
                              guard=job.guard)
        self.build = CudaBuild(job.program, self.code)

    def run(self, inputs) -> bool:
        return self.build.run(inputs)

    def output(self, k, copy=True):
        return self.build.output(k, copy)

    def profile(self, inputs, repeats=5) -> list:
        return self.build.profile(inputs, repeats)

    def source(self) -> str:
        from ..compiler.codegen.cuda import render_cuda_source

        return render_cuda_source(self.code)

    def stats(self) -> dict:
        b = self.build
        return dict(compile_seconds=b.compile_seconds, load_seconds=b.load_seconds,
                    cache_hit=b.cache_hit, cache=b.cache_reason, kernel_files=b.kernel_files,
                    kernel_files_reused=b.kernel_files_reused, driver=b.driver_path,
                    driver_kind=b.driver)
