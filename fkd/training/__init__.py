"""Training: the generic trainer, the synthetic pre-stage and `init_from` weights."""
