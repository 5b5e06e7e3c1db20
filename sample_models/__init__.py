"""Small sample models in plain PyTorch with deterministic random weights (no downloads)."""
