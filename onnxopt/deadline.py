"""The time a search has left, seen by the steps it runs as candidates.

``optimize --time-budget`` runs each candidate as a step of its own; a step that is itself a
search (quantize ``auto``) tries its recipes one after another. Inside :func:`until`, such a
step stops starting new recipes once the search's budget is spent, says so on the rows it did
not try, and marks its report ``cut_short`` so the cache never hands that partial answer to a
later run with more time. Outside any search there is no deadline.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("onnxopt_deadline", default=None)


@contextlib.contextmanager
def until(monotonic: float | None) -> Iterator[None]:
    """Within this block, :func:`passed` turns true at ``monotonic`` (None: never)."""
    token = _deadline.set(monotonic)
    try:
        yield
    finally:
        _deadline.reset(token)


def passed() -> bool:
    """Whether the enclosing search's time budget is spent."""
    deadline = _deadline.get()
    return deadline is not None and time.monotonic() >= deadline


#: the reason a candidate the deadline stopped reads
REASON = "not tried: the search's time budget was spent"
