"""A package's names imported on first use (PEP 562): importing one module of a package then imports only what
that module needs, not every sibling the package's ``__init__`` re-exports (`import pdspace.data.tasks`, as
`pdspace-report` does, no longer imports Lightning and `datasets` with the data module).

Not for `pdspace` itself: importing it registers the built-in strategies (through `pdspace.peft`), which
`pdspace.design` needs and, by the layering, cannot import itself."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`: name -> the module it is imported from, on first access."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)  # later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted({*exports, *vars(sys.modules[package])})

    return __getattr__, __dir__
