"""What PostgreSQL can store, and the one rule for text it cannot.

PostgreSQL's ``text`` and ``jsonb`` hold no NUL character (U+0000), and UTF-8 has no
encoding for a lone surrogate (U+D800-U+DFFF on its own). Free text the worker writes on
a task's behalf — an error, an info message, a log line, captured output, a link's key —
is made storable by ``clean_text``: each such character is written as its Python escape
(``\\x00``, ``\\ud800``), so the text stays readable and says what was there. Values whose
exactness matters (arguments, results) are never altered: they are refused instead.
"""

from __future__ import annotations


def clean_text(text: str) -> str:
    """``text`` with every NUL and lone surrogate written as its backslash escape."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
