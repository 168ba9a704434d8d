"""KD-Loss (Fard & Mahoor): the method, its config recipe and its ablation rows."""
