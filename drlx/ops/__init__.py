"""Native operations called from XLA through JAX's FFI (built by `python -m drlx.ops.build`)."""
