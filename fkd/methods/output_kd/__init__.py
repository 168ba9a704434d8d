"""Output distillation, the plain regression-KD baseline: the method."""
