"""What PostgreSQL can store, and the one rule for text it cannot.

PostgreSQL's ``text`` and ``jsonb`` hold no NUL character (U+0000), and UTF-8 has no
encoding for a lone surrogate (U+D800-U+DFFF on its own). Free text the worker writes on
a task's behalf — an error, an info message, a log line, captured output, a link's key —
is made storable by ``clean_text``: each such character is written as its Python escape
(``\\x00``, ``\\ud800``), so the text stays readable and says what was there. Values whose
exactness matters (arguments, results) are never altered: they are refused instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from pgbg.exceptions import UnstorableValue


def clean_text(text: str) -> str:
    """``text`` with every NUL and lone surrogate written as its backslash escape."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


# -- values stored exactly: arguments, keyword arguments, results --------------------------

MAX_INT_DIGITS = 4300  # Python's default limit on int <-> str: past it, reading a row fails
_INT_LIMIT = 10 ** MAX_INT_DIGITS
MAX_DEPTH = 200  # nesting kept well inside the recursion limits of json and of a task's stack
_SCALARS = (type(None), bool, str)


def text_problem(text: str) -> str | None:
    """Why PostgreSQL cannot store ``text`` (None: it can)."""
    if "\x00" in text:
        return "strings cannot hold NUL (\\x00)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"strings cannot hold a lone surrogate "
                    f"({text[exc.start]!r} at index {exc.start})")
    return None


def check_text(text: str, where: str) -> str:
    """``text`` if PostgreSQL can store it, else ``UnstorableValue`` naming ``where``."""
    problem = text_problem(text)
    if problem is not None:
        raise UnstorableValue(f"{where}: {problem}")
    return text


def _problem(value: object) -> str | None:
    """Why a JSON leaf (or a container's own type) cannot round-trip (None: it can)."""
    kind = type(value)
    if kind is str:
        return text_problem(value)  # type: ignore[arg-type]
    if kind is int:
        if -_INT_LIMIT < value < _INT_LIMIT:
            return None
        return f"an int of more than {MAX_INT_DIGITS} digits cannot be read back"
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            return f"{value!r} is not a JSON number"
        if value == 0.0 and math.copysign(1.0, value) < 0:
            return "-0.0 cannot be stored (PostgreSQL's numeric has no negative zero)"
        return None
    if kind in _SCALARS or kind is list or kind is dict or kind is tuple:
        return None  # a tuple is a JSON array: it comes back as a list
    if isinstance(value, (bool, int, float, str, list, dict)):
        return (f"{kind.__name__} (a subclass of {kind.__mro__[1].__name__}) would come back "
                f"as a plain {kind.__mro__[1].__name__}")
    return f"{kind.__name__} is not JSON-serialisable"


def check_json(value: object, where: str) -> None:
    """Refuse (``UnstorableValue``, naming the part by its path from ``where``) any value
    that jsonb cannot store or that would not come back as the same Python value: text
    with NUL or a lone surrogate, NaN and infinities, -0.0, ints past 4300 digits, dict
    keys that are not ``str``, subclasses of the JSON types, nesting deeper
    than ``MAX_DEPTH``. Iterative: any depth is refused without recursing."""
    if scan(((value,),)) is not None:
        return
    _explain(value, where)
    raise UnstorableValue(f"{where}: cannot be stored")  # pragma: no cover - scan agrees


def scan(containers: Iterable[Any]) -> bool | None:
    """One pass over many calls' ``args`` (lists or tuples) or ``kwargs`` (dicts): None if
    any part is not storable (``check_json`` then says which), else whether a float needs
    positional writing (``dumps``; else ``json.dumps`` writes them exactly). Tuples are
    JSON arrays, as lists are."""
    positional = False
    stack: list[tuple[Any, int]] = [(c, -1) for c in containers]
    while stack:
        node, depth = stack.pop()
        kind = type(node)
        if kind is dict:
            for key in node:
                if type(key) is not str or ((not key.isascii() or "\x00" in key) \
                        and text_problem(key) is not None):
                    return None
            items = node.values()
        elif kind is list or kind is tuple:
            items = node
        else:
            return None
        if depth >= MAX_DEPTH and node:
            return None
        for item in items:
            kind = type(item)
            if kind is str:
                if (not item.isascii() or "\x00" in item) and text_problem(item) is not None:
                    return None
            elif kind is int:
                if not -_INT_LIMIT < item < _INT_LIMIT:
                    return None
            elif kind is float:
                if not _SAFE_FLOAT_MIN <= abs(item) < _SAFE_FLOAT_MAX:
                    if _problem(item) is not None:
                        return None
                    positional = positional or item != 0.0
            elif kind is list or kind is dict or kind is tuple:
                stack.append((item, depth + 1))
            elif item is not None and kind is not bool:
                return None
    return positional


# Floats whose repr has no exponent (and is not -0.0): json.dumps writes them exactly.
_SAFE_FLOAT_MIN, _SAFE_FLOAT_MAX = 1e-4, 1e16


def _explain(value: object, where: str) -> None:
    """Raise ``UnstorableValue`` for the first part of ``value`` that cannot be stored,
    named by its path from ``where``."""
    stack: list[tuple[object, str, int]] = [(value, where, 0)]
    while stack:
        node, path, depth = stack.pop()
        problem = _problem(node)
        if problem is not None:
            raise UnstorableValue(f"{path}: {problem}")
        if type(node) is list or type(node) is tuple:
            if depth >= MAX_DEPTH and node:
                raise UnstorableValue(f"{path}: nested deeper than {MAX_DEPTH} levels")
            for index, item in enumerate(node):
                if type(item) not in _LEAVES or _problem(item) is not None:
                    stack.append((item, f"{path}[{index}]", depth + 1))
        elif type(node) is dict:
            if depth >= MAX_DEPTH and node:
                raise UnstorableValue(f"{path}: nested deeper than {MAX_DEPTH} levels")
            for key, item in node.items():
                if type(key) is not str:
                    raise UnstorableValue(
                        f"{path}: key {_short(key)} is not a str (JSON would make it one)")
                problem = text_problem(key)
                if problem is not None:
                    raise UnstorableValue(f"{path}: key {key!r}: {problem}")
                if type(item) not in _LEAVES or _problem(item) is not None:
                    stack.append((item, f"{path}[{key!r}]", depth + 1))


_LEAVES = frozenset({type(None), bool, int, float, str})


def _short(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int too long to write
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def dumps(value: Any) -> str:
    """``value`` as JSON that jsonb gives back exactly: as ``json.dumps`` writes it, except
    that every float is written positionally with a decimal point (``1e16`` would come back
    from jsonb's ``numeric`` as the int 10000000000000000). Checks nothing beyond what
    ``json.dumps`` checks; ``check_json`` first. Only the parts holding such a float are
    written in Python; the rest by ``json.dumps``."""
    if not _needs_positional(value):
        return json.dumps(value, allow_nan=False)
    kind = type(value)
    if kind is float or isinstance(value, float):
        return float_text(value)
    if kind is dict:
        return "{" + ", ".join(f"{json.dumps(k if type(k) is str else json.dumps(k))}: "
                               f"{dumps(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(dumps(item) for item in value) + "]"


def _needs_positional(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is float or (isinstance(node, float) and kind is not bool):
            if not _SAFE_FLOAT_MIN <= abs(node) < _SAFE_FLOAT_MAX and node != 0.0:
                return True
        elif kind is list or kind is tuple:
            stack.extend(node)
        elif kind is dict:
            stack.extend(node.values())
    return False


def float_text(value: float) -> str:
    """A finite float in positional notation with a decimal point, its shortest repr's
    digits: ``1e+16`` -> ``10000000000000000.0``, ``1.5e-07`` -> ``0.00000015``."""
    if not math.isfinite(value):
        raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
    text = repr(float(value))
    if "e" in text:
        text = format(Decimal(text), "f")
    return text if "." in text else text + ".0"
