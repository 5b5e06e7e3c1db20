"""A small multilayer perceptron (tabular features in, class logits out)."""

from __future__ import annotations

from torch import nn

from sample_models._seed import seeded


def build(features: int = 64, hidden: int = 128, classes: int = 10, seed: int = 0) -> nn.Module:
    """Three Linear layers with ReLU, deterministic random weights."""
    return seeded(
        lambda: nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        ),
        seed,
    )
