"""Jinja filters: every value a task carries shown safely, however hostile or large.

Autoescape makes HTML inert; these filters also make invisible or misleading characters
visible (C0/C1 controls, bidirectional overrides, zero-width characters) and cut what is
too long to show, saying how much was left out.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment

from pgbg.web.charts import seconds_text

# C0 and C1 controls but tab and newline, DEL, bidi embeddings/overrides/isolates,
# zero-width characters and the line/paragraph separators.
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e"
                        "\u2060-\u2069\ufeff]")


def visible(text: str) -> str:
    return _INVISIBLE.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def clip(value: Any, limit: int = 2000) -> str:
    """``value`` as text, at most ``limit`` characters, controls shown as escapes."""
    text = "" if value is None else str(value)
    if len(text) > limit:
        text = text[:limit] + f"… ({len(text) - limit:,} more characters)"
    return visible(text)


def pretty_json(value: Any, limit: int = 20000) -> str:
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError):
        text = repr(value)
    return clip(text, limit)


def when(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return ""
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    if seconds < 0:
        return "in " + seconds_text(-seconds)
    return seconds_text(seconds) + " ago"


def between(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return seconds_text((end - start).total_seconds())


def bigtext(value: Any) -> str:
    """A ``data.Big``: indented when whole, else its cut text and how much was left out."""
    if value is None or value.text is None:
        return ""
    text = visible(value.pretty() or "")
    if value.cut:
        text += f"… ({value.length - len(value.text):,} more characters)"
    return text


def install(env: Environment) -> None:
    env.filters.update(clip=clip, pretty_json=pretty_json, when=when, ago=ago,
                       seconds=seconds_text, between=between, visible=visible,
                       bigtext=bigtext)
