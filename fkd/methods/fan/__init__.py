"""MobileFAN / EfficientFAN heatmap distillation: the method, its config recipe and its ablation
rows."""
