"""Deterministic construction helper."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T", bound=torch.nn.Module)


def seeded(build: Callable[[], T], seed: int) -> T:
    """Build a module under a fixed seed without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build()
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                # Non-trivial running statistics, as a trained network has.
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                torch.nn.init.uniform_(m.weight, 0.5, 1.0)
                torch.nn.init.uniform_(m.bias, -0.1, 0.1)
    return module.eval()
