"""Import the user's Python code safely: model factories and callables (``module:function``).

A spec is ``package.module:function`` (imported from the pipeline's folder and the current
one) or ``path/to/file.py:function`` (a file inside a package is imported as part of it).
Importing writes no ``__pycache__`` beside the user's files. **This runs the user's code.**
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from onnxopt.config.base import is_file_target, resolve_user_path
from onnxopt.errors import InputError, did_you_mean


def _split_factory(spec: str) -> tuple[str, str]:
    target, sep, func = spec.rpartition(":")
    if not sep or not target or not func:
        raise InputError(
            f"factory {spec!r} is not of the form 'package.module:function' or "
            "'path/to/file.py:function'"
        )
    return target, func


def factory_source_file(spec: str, base_dir: Path) -> Path | None:
    """The .py file that defines a factory (for cache keys), without importing it if possible."""
    try:
        target, _ = _split_factory(spec)
    except InputError:
        return None
    if is_file_target(target):
        return Path(resolve_user_path(target, base_dir))  # as the config resolves it
    with _sys_path(base_dir):
        try:
            found = importlib.util.find_spec(target)
        except (ImportError, ValueError):
            return None
    return Path(found.origin) if found and found.origin else None


@contextlib.contextmanager
def _sys_path(*folders: Path) -> Iterator[None]:
    added = [str(f) for f in folders if str(f) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for entry in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def _import_file(path: Path) -> Any:
    """Import a .py file; a file inside a package is imported as part of that package."""
    root, parts = path.parent, [path.stem]
    while (root / "__init__.py").is_file():
        parts.insert(0, root.name)
        root = root.parent
    if len(parts) > 1:
        with _sys_path(root):
            return importlib.import_module(".".join(parts))
    mod_name = f"_onnxopt_factory_{path.stem}_{abs(hash(str(path)))}"
    spec_obj = importlib.util.spec_from_file_location(mod_name, path)
    if spec_obj is None or spec_obj.loader is None:
        raise InputError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec_obj)
    sys.modules[mod_name] = module
    with _sys_path(path.parent):
        spec_obj.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _no_bytecode() -> Iterator[None]:
    """Import the user's modules without writing ``__pycache__`` folders beside them."""
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before


def load_factory(spec: str, base_dir: Path) -> Callable[..., Any]:
    """Import the factory function named by ``spec`` (the user's folders stay unwritten)."""
    with _no_bytecode():
        return _load_factory(spec, base_dir)


def _load_factory(spec: str, base_dir: Path) -> Callable[..., Any]:
    target, func = _split_factory(spec)
    try:
        if is_file_target(target):
            path = Path(resolve_user_path(target, base_dir))  # as the config resolves it
            if not path.is_file():
                raise InputError(f"factory file not found: {path}", hint="check model.factory")
            module = _import_file(path.resolve())
        else:
            with _sys_path(base_dir, Path.cwd()):
                module = importlib.import_module(target)
    except InputError:
        raise
    except Exception as err:
        raise InputError(
            f"cannot import factory module {target!r}: {type(err).__name__}: {err}"
        ) from None
    fn = getattr(module, func, None)
    if fn is None or not callable(fn):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise InputError(
            f"factory {func!r} not found in {target!r}{did_you_mean(func, names)}",
            hint=f"callables there: {', '.join(names[:12])}",
        )
    return fn  # type: ignore[no-any-return]
