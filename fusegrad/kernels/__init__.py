"""Code that runs inside compiled kernels, and what generated code imports at run time.

    kernel_lang.py      the kernel language's own names (@kernel, @helper, pointer casts, BLAS)
    cpu_math.py         vectorisable float32 exp / log / tanh / sigmoid / erf
    cpu_intrinsics.py   radd: a reassociable add, so row sums vectorise
    cpu_library.py      the CPU library kernels (GEMM, strided copies, gathers, windows, random
                        numbers, checks) and the generic dispatcher that runs a schedule
    cuda_library.py     the same library for CUDA (Numba CUDA kernels and their launchers)
    cuda_gemm.py        GEMM on the GPU: cuBLAS through CuPy, or a tiled kernel
    cuda_config.py      CUDA launch sizes

The code generators (compiler/codegen) write kernels that call these; the native compiler
(compiler/native) compiles the CPU ones into every kernel that calls them, so a change here
changes the kernel cache's key (compiler/native/build.py). Nothing here imports the compiler or
the runtime.
"""
