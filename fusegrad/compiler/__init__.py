"""The compiler: tracing, autodiff, optimizers in IR, passes and code generation."""
