"""Makes ``torch.classes.paired`` and ``torch.ops.paired`` work after ``import paired_replacement``.

A user of the original API writes ``import paired_replacement`` and then calls
``torch.classes.paired.WeightCache(...)``, as with any torch extension. Loading the compiled
library at import time would (a) import torch in the torch-free tools that live in this package
(the NumPy reference, the analysis stage) and (b) fix the library before a benchmark could pick a
per-host build with ``load_extension(DIR)``. So the import only places two placeholders,
``torch.classes.paired`` and ``torch.ops.paired``; the first attribute looked up on either loads
the library (``load_extension()``: ``PAIRED_REPLACEMENT_BUILD_DIR`` or the pip-installed build)
and hands over to torch's own namespace objects. If torch is not imported yet, the placeholders
are placed right after its import finishes, so the order of the two imports does not matter and a
process that never imports torch never pays for it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import types
from typing import Any

NAMESPACE = "paired"


class _LoadOnFirstUse(types.ModuleType):
    """Stands in for ``torch.<kind>.paired`` until the library is loaded."""

    def __init__(self, parent: types.ModuleType) -> None:
        super().__init__(f"{parent.__name__}.{NAMESPACE}")
        self._parent = parent

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # copy, pickle and inspect probe dunders: no load for those
            raise AttributeError(attr)
        from ._extension import load_extension

        load_extension()
        parent = self.__dict__["_parent"]
        if parent.__dict__.get(NAMESPACE) is self:
            delattr(parent, NAMESPACE)  # torch's __getattr__ now creates the real namespace
        return getattr(getattr(parent, NAMESPACE), attr)


def _place(torch: types.ModuleType) -> None:
    for parent in (torch.classes, torch.ops):
        if NAMESPACE not in parent.__dict__:
            setattr(parent, NAMESPACE, _LoadOnFirstUse(parent))


class _AfterTorchImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps torch's loader so that the placeholders follow its import."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from recursing
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_place(module: types.ModuleType) -> None:
            exec_module(module)
            _place(module)

        spec.loader.exec_module = exec_then_place  # type: ignore[method-assign]
        return spec


def install() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "ops"):
        _place(torch)
    elif not any(isinstance(f, _AfterTorchImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTorchImport())
