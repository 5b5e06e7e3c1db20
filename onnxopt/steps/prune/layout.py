"""Channel pruning through the layout ops real exports are made of: each moves, pads or
resamples a tensor without mixing its channels, so a group passes through it, possibly on
another axis (Transpose, Squeeze, Unsqueeze), or fails with the op's name and the reason.

| op | rule |
|---|---|
| Pad | pads on other axes pass the channels; pads on the channel axis end the group |
| Transpose | the channels follow the permuted axis |
| Squeeze / Unsqueeze | the channels follow their axis as others are removed or inserted |
| Slice | slices of other axes pass; a slice of the channel axis passes only whole |
| Split | splits along other axes pass the channels to every part |
| Resize / Upsample | passes when the channel axis keeps its scale (1) or its size (updated) |
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.steps.prune.groups import ChannelGraph, attr, norm_axis


class LayoutRules(ChannelGraph):
    """The layout ops' rules (see the module's table)."""

    def _ranked(self, node: onnx.NodeProto, tensor: str, space: int) -> int | None:
        rank = self.rank(tensor)
        if rank is None:
            self._fail(space, f"{self.name(node)}: {node.op_type} of {tensor!r}, of unknown rank")
        return rank

    def _pad(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        rank = self._ranked(node, tensor, space)
        pads = self.constant(node, 1, "pads")
        if rank is None:
            return
        if pads is None:
            self._fail(space, f"{self.name(node)}: Pad with pads computed at run time")
            return
        axes = self.constant(node, 3, "axes") if self.given(node, 3, "axes") else list(range(rank))
        if axes is None:
            self._fail(space, f"{self.name(node)}: Pad with axes computed at run time")
            return
        axes = [a % rank for a in axes]
        half = len(pads) // 2
        channel = axis % rank
        if channel in axes:
            at = axes.index(channel)
            if pads[at] != 0 or pads[at + half] != 0:
                self._fail(space, f"{self.name(node)}: Pad pads the channel axis of {tensor!r}")
                return
        self._carry(node.output[0], space, axis)

    def _transpose(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        rank = self._ranked(node, tensor, space)
        if rank is None:
            return
        perm = attr(node, "perm", None) or list(range(rank))[::-1]
        self._carry(node.output[0], space, norm_axis(list(perm).index(axis % rank), rank))

    def _squeeze(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        rank = self._ranked(node, tensor, space)
        if rank is None:
            return
        axes = self.constant(node, 1, "axes")
        if axes is None:
            axes = [i for i, d in enumerate(self.shapes[tensor]) if d == 1]
        axes = sorted(a % rank for a in axes)
        channel = axis % rank
        if channel in axes:
            self._fail(space, f"{self.name(node)}: Squeeze removes the channel axis")
            return
        new = channel - sum(1 for a in axes if a < channel)
        self._carry(node.output[0], space, norm_axis(new, rank - len(axes)))

    def _unsqueeze(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        rank = self._ranked(node, tensor, space)
        axes = self.constant(node, 1, "axes")
        if rank is None:
            return
        if axes is None:
            self._fail(space, f"{self.name(node)}: Unsqueeze with axes computed at run time")
            return
        out_rank = rank + len(axes)
        inserted = {a % out_rank for a in axes}
        kept = [i for i in range(out_rank) if i not in inserted]
        self._carry(node.output[0], space, norm_axis(kept[axis % rank], out_rank))

    def _slice(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        rank = self._ranked(node, tensor, space)
        starts, ends = self.constant(node, 1, "starts"), self.constant(node, 2, "ends")
        if rank is None:
            return
        if starts is None or ends is None:
            self._fail(space, f"{self.name(node)}: Slice with bounds computed at run time")
            return
        axes = self.constant(node, 3, "axes") if self.given(node, 3, "axes") else None
        steps = self.constant(node, 4, "steps") if self.given(node, 4, "steps") else None
        if (axes is None and self.given(node, 3, "axes")) or (
            steps is None and self.given(node, 4, "steps")
        ):
            self._fail(space, f"{self.name(node)}: Slice with axes or steps computed at run time")
            return
        axes = list(range(len(starts))) if axes is None else axes
        channel = axis % rank
        for i, a in enumerate(axes):
            if a % rank != channel:
                continue
            step = steps[i] if steps else 1
            if not (starts[i] == 0 and ends[i] >= self._group(space).size and step == 1):
                self._fail(space, f"{self.name(node)}: Slice cuts the channel axis")
                return
        self._carry(node.output[0], space, axis)

    def _split(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        rank = self._ranked(node, tensor, space)
        if rank is None:
            return
        if attr(node, "axis", 0) % rank == axis % rank:
            self._fail(space, f"{self.name(node)}: Split of the channel axis")
            return
        for out in node.output:
            if out:
                self._carry(out, space, axis)

    def _resize(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        rank = self._ranked(node, tensor, space)
        if rank is None:
            return
        channel = axis % rank
        scales_at = 1 if node.op_type == "Upsample" or len(node.input) == 2 else 2
        scales = self.weight(node, scales_at)
        if scales is None and node.op_type == "Upsample":
            listed = attr(node, "scales", None)
            scales = None if listed is None else np.array(listed)
        sizes = self.weight(node, 3)
        if attr(node, "axes", None) is not None:
            self._fail(space, f"{self.name(node)}: Resize with axes is not understood")
        elif scales is not None and scales.size == rank:
            if float(scales.reshape(-1)[channel]) != 1.0:
                self._fail(space, f"{self.name(node)}: Resize scales the channel axis")
                return
            self._carry(node.output[0], space, axis)
        elif sizes is not None and sizes.size == rank and self._private(node, 3):
            if int(sizes.reshape(-1)[channel]) != self._group(space).size:
                self._fail(space, f"{self.name(node)}: Resize changes the channel count")
                return
            self._group(space).members.append(("sizes", node, (3, channel)))
            self._carry(node.output[0], space, axis)
        else:
            self._fail(space, f"{self.name(node)}: Resize with sizes computed at run time")
