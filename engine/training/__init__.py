"""Optional training tools: synthetic data, model training and export (the `train` extra)."""
