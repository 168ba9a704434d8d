"""fkd: facial-landmark knowledge distillation in JAX/Flax (KD-Loss, MobileFAN, EfficientFAN)."""

from fkd import xla_flags as _xla_flags

_xla_flags.apply()  # CPU-only XLA flags, before JAX starts a backend (see fkd/xla_flags.py)
