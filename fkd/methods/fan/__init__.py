"""MobileFAN / EfficientFAN heatmap distillation: the method and its config recipe."""
