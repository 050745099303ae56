"""Launch sizes of the CUDA backend: one table for a real GPU, one for Numba's simulator.

The simulator runs every CUDA thread as a Python thread and every block one after the other, so
there the blocks are small and few (grid-stride loops cover any size); a GPU wants many wide
blocks. Each size can be overridden by an environment variable (fusegrad/config.py), read once
per process:

    FUSEGRAD_CUDA_THREADS   threads per block (a power of two: the reduction trees halve it)
    FUSEGRAD_CUDA_BLOCKS    most blocks of a grid-stride launch
    FUSEGRAD_CUDA_CHUNKS    most row chunks of a column reduction (one block each)
    FUSEGRAD_CUDA_TILE      tile edge of the shared-memory GEMM used without CuPy

Nothing here imports numba.cuda: the simulator is told apart by Numba's config flag, which
NUMBA_ENABLE_CUDASIM sets when Numba is imported.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .. import config


@dataclass(frozen=True)
class LaunchConfig:
    threads: int  # threads per block of every generated kernel
    max_blocks: int  # grid-stride kernels launch at most this many blocks
    chunks: int  # column reductions: rows are split into at most this many chunks
    tile: int  # the fallback GEMM's tile edge (tile x tile threads per block)
    simulator: bool


GPU = dict(threads=256, max_blocks=4096, chunks=64, tile=16)
# tiny blocks and grids: a syncthreads costs milliseconds in the simulator, and every simulated
# thread is an OS thread (2 blocks still exercise the grid-stride and multi-block paths)
SIMULATOR = dict(threads=16, max_blocks=2, chunks=2, tile=4)
ENV = dict(threads="FUSEGRAD_CUDA_THREADS", max_blocks="FUSEGRAD_CUDA_BLOCKS",
           chunks="FUSEGRAD_CUDA_CHUNKS", tile="FUSEGRAD_CUDA_TILE")


def simulator_enabled() -> bool:
    from numba.core import config

    return bool(config.ENABLE_CUDASIM)


@lru_cache(maxsize=None)
def launch_config() -> LaunchConfig:
    sim = simulator_enabled()
    sizes = dict(SIMULATOR if sim else GPU)
    for key, var in ENV.items():
        value = config.get(var)
        if value is not None:
            sizes[key] = value
    t = sizes["threads"]
    if t < 1 or t & (t - 1):
        raise ValueError(f"{ENV['threads']}={t}: threads per block must be a power of two")
    return LaunchConfig(simulator=sim, **sizes)


def blocks_for(n: int, cfg: LaunchConfig) -> int:
    """Blocks of a grid-stride launch over n items: enough for one item a thread, capped."""
    return max(1, min(-(-n // cfg.threads), cfg.max_blocks))
