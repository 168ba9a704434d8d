"""Output distillation, the plain regression-KD baseline: the method and its rows in KD-Loss's
ablation (its config reuses the KD-Loss recipe, `fkd.methods.kd.recipe`)."""
