"""pgbg in a Django project: the ``django.tasks`` backend, the app (label ``pgbg``) with
its admin, ``manage.py pgbg …`` and ``manage.py migrate`` for pgbg's schema.

Settings::

    INSTALLED_APPS = [..., "pgbg.contrib.django"]
    TASKS = {"default": {"BACKEND": "pgbg.contrib.django.PgbgBackend"}}
    PGBG_DATABASE = "default"  # the DATABASES alias holding pgbg's schema (the default)

Names load on first use: adding the app to ``INSTALLED_APPS`` imports nothing else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgbg.contrib.django.backend import InvalidTaskArguments, PgbgBackend, PgbgTask

_WHERE = {
    "InvalidTaskArguments": "pgbg.contrib.django.backend",
    "PgbgBackend": "pgbg.contrib.django.backend",
    "PgbgTask": "pgbg.contrib.django.backend",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pgbg.contrib.django' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["InvalidTaskArguments", "PgbgBackend", "PgbgTask"]
