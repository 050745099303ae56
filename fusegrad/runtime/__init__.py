"""The runtime: executables, buffers, caches and training-loop helpers."""
