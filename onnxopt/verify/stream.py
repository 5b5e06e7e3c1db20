"""Recurrent models: outputs that feed back as inputs, verified in closed loop.

A model that takes a ``state`` and returns a ``stateN`` of the same shape (``h``/``c``
pairs, ``h0``/``hn``, ``cache_in``/``cache_out``) is deployed as a loop: each chunk gets the
state the model itself returned for the chunk before. Checking every chunk with the
original's state hides a candidate whose state drifts; so, over the held-out samples in
order, the parent and the candidate each carry their own state (the first chunk starts from
the sample's own).
"""

from __future__ import annotations

import re
from typing import Any

import onnx

from onnxopt.graph import value_info_shape

#: name parts that mark the direction of a state, dropped before names are matched
_MARKS = re.compile(
    r"(^|[_./:-])(in|out|input|output|inp|new|next|prev|old|present|past|last|final|"
    r"init|initial|o|i|n|t|0|1)(?=$|[_./:-])",
    re.I,
)


def _stem(name: str) -> str:
    """'state_in' -> 'state', 'hn' -> 'h', 'h0' -> 'h', 'cache.out' -> 'cache'."""
    text = name.lower()
    previous = None
    while previous != text:
        previous = text
        text = _MARKS.sub("", text)
    text = re.sub(r"(?<=[a-z])(n|0|1)$", "", text)  # hn, h0, c1, stateN
    return re.sub(r"[_./:-]+", "", text)


def state_pairs(model: onnx.ModelProto) -> dict[str, str]:
    """input name -> output name of every state the model returns for its next call: same
    element type, same shape (symbolic dims by name), and the same name once direction
    marks are dropped."""
    graph = model.graph
    init = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init]
    pairs: dict[str, str] = {}
    taken: set[str] = set()
    for inp in inputs:
        for out in graph.output:
            if out.name in taken or not _same_tensor(inp, out):
                continue
            if _stem(inp.name) and _stem(inp.name) == _stem(out.name):
                pairs[inp.name] = out.name
                taken.add(out.name)
                break
    return pairs


def _same_tensor(a: onnx.ValueInfoProto, b: onnx.ValueInfoProto) -> bool:
    """Same element type and rank; fixed dims equal where both are fixed (exporters name
    an output's symbolic dims their own way)."""
    if a.type.tensor_type.elem_type != b.type.tensor_type.elem_type:
        return False
    sa, sb = value_info_shape(a), value_info_shape(b)
    if len(sa) != len(sb) or not sa:
        return False
    return all(
        not (isinstance(x, int) and isinstance(y, int)) or x == y
        for x, y in zip(sa, sb, strict=True)
    )


def closed_loop(
    session: Any, samples: list[dict[str, Any]], pairs: dict[str, str], where: str
) -> list[list[Any]]:
    """The outputs on each sample in order, each chunk fed the states of the one before."""
    from onnxopt.runtime import run_session

    names = [o.name for o in session.get_outputs()]
    results: list[list[Any]] = []
    carried: dict[str, Any] = {}
    for sample in samples:
        feeds = dict(sample)
        for inp in pairs:
            if inp in carried and carried[inp].shape == sample[inp].shape:
                feeds[inp] = carried[inp]
        outputs = run_session(session, feeds, where)
        results.append(outputs)
        by_name = dict(zip(names, outputs, strict=True))
        carried = {inp: by_name[out] for inp, out in pairs.items() if out in by_name}
    return results
