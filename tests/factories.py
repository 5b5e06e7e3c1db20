"""PyTorch factories used by the export tests (loaded by file path, like a user's file)."""

from __future__ import annotations

import torch
from torch import nn


class ExportDiffers(nn.Module):
    """Computes x in eager mode but x + 1 in any exported graph: a planted exporter bug."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return x + 1
        return x


class DataDependent(nn.Module):
    """Python control flow on values: dynamo refuses it, torchscript traces one branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x * 3


class BakesBatch(nn.Module):
    """Turns the batch size into a Python int: torchscript bakes it in as a constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * int(x.shape[0])


class TwoOutputs(nn.Module):
    """Returns a dict of two tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"a": self.lin(x) + y.sum(), "b": x * 2}


def export_differs() -> nn.Module:
    return ExportDiffers()


def data_dependent() -> nn.Module:
    return DataDependent()


def bakes_batch() -> nn.Module:
    return BakesBatch()


def two_outputs() -> nn.Module:
    torch.manual_seed(0)
    return TwoOutputs()


def raises() -> nn.Module:
    raise ValueError("checkpoint folder is empty")


def not_a_module() -> int:
    return 42


def calibration_batches():  # type: ignore[no-untyped-def]
    """Calibration samples for tests/models.py:compute_model, as a user's generator."""
    import numpy as np

    rng = np.random.default_rng(11)
    for _ in range(5):
        yield {"x": rng.uniform(size=(1, 3, 8, 8)).astype(np.float32)}


def bad_calibration():  # type: ignore[no-untyped-def]
    yield {"wrong_name": 1}
