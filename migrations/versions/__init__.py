"""pgbg's revisions. A downgrade that restores an object an earlier revision defined
reads its definition from that revision's file, so no definition is written twice."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def definition(revision_file: str, name: str) -> Any:
    """The module-level ``name`` of the revision file ``revision_file`` (in this folder)."""
    path = Path(__file__).with_name(revision_file)
    spec = importlib.util.spec_from_file_location(f"pgbg_revision_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)
