"""Losses: KD-Loss and its regression terms, and the feature/affinity distillation losses."""
