"""fkd: facial-landmark knowledge distillation in JAX/Flax."""

from fkd import runtime as _runtime

_runtime.configure()  # XLA:CPU settings that must precede JAX's CPU client; see fkd/runtime.py
