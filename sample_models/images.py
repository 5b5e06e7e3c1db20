"""Deterministic image-like samples for the ResNet-style sample (no downloads).

Natural images are smooth, with a few objects and edges, and their pixels are correlated
across channels; uniform noise is none of these. Each sample here is a sum of coloured
Gaussian blobs and a gradient over a faint noise floor, in [0, 1], shaped [1, 3, 224, 224]:
unlabelled inputs that a data source (``data: {source: callable}``) can draw from.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def image(rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """One [1, 3, size, size] float32 image in [0, 1]."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    base = rng.uniform(0.2, 0.8, 3)[:, None, None] + 0.3 * (
        np.cos(angle) * xs + np.sin(angle) * ys - 0.5
    )
    picture = np.broadcast_to(base, (3, size, size)).copy()
    for _ in range(int(rng.integers(2, 7))):
        cy, cx = rng.uniform(0, 1, 2)
        radius = rng.uniform(0.04, 0.25)
        blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius**2))
        colour = rng.uniform(-0.6, 0.6, 3)[:, None, None]
        picture += colour * blob
    picture += rng.normal(0, 0.02, picture.shape)
    return np.clip(picture, 0.0, 1.0).astype(np.float32)[None]


def samples(seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """An endless stream of ``{"image": [1, 3, 224, 224]}`` samples (the data source reads
    as many as its ``samples`` says)."""
    rng = np.random.default_rng(seed)
    while True:
        yield {"image": image(rng)}
