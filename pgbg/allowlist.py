"""The ``--allow`` rule, shared by the worker's pre-check (``decisions.allowed``, on the
name alone) and the child's definitive check (``child.resolve``, on what the name
resolves to). No imports beyond the standard library: the fork server loads it."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any


def dotted(name: str) -> bool:
    """Identifiers separated by dots: a module name, or a qualified name after the colon."""
    return all(part.isidentifier() for part in name.split("."))


def module_allowed(module: str, allow: Sequence[str] | None) -> bool:
    """Is ``module`` within the module prefixes ``allow`` (None: any)?"""
    if allow is None:
        return True
    return any(module == prefix or module.startswith(prefix.rstrip(".") + ".")
               for prefix in allow)


def defined_in_allowed(target: Any, allow: Sequence[str]) -> bool:
    """Is ``target`` a plain Python function (or a class's function) whose defining module
    is within ``allow``? Not a builtin such as ``os.system``, a class, nor anything
    imported into an allowed module from elsewhere."""
    return (inspect.isfunction(target)
            and module_allowed(getattr(target, "__module__", None) or "", allow))
