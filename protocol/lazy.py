# Lazy re-exports for package faces (the websockets package's way): a package lists which module
# holds each public name; the module is imported the first time the name is read. Importing a
# package therefore costs nothing until a name is used, and importing the sans-I/O core never
# drags in threads, sockets or SQLite. Type checkers see the eager imports under TYPE_CHECKING.
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(namespace: dict[str, Any], exports: Mapping[str, str]) -> None:
    """Give the package whose globals are ``namespace`` a module ``__getattr__``/``__dir__`` that
    import ``exports[name]`` (a module path) on first use of ``name`` and cache the value.

    Args:
        namespace: the package's ``globals()``.
        exports: public name → absolute module path holding it.
    """
    package = namespace["__name__"]

    def module_getattr(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def module_dir() -> list[str]:
        return sorted(set(namespace) | set(exports))

    namespace["__getattr__"] = module_getattr
    namespace["__dir__"] = module_dir
