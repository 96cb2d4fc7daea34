"""pgbg's settings in a Django project, and the database they name.

``PGBG_DATABASE`` (default ``"default"``): the alias in ``DATABASES`` whose PostgreSQL
database holds pgbg's schema. pgbg's API, the ``django.tasks`` backend, the worker that
``manage.py pgbg worker`` starts and ``manage.py migrate`` all use that database.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULT_ALIAS = "default"


def database_alias() -> str:
    """The ``DATABASES`` alias pgbg uses (``settings.PGBG_DATABASE``)."""
    alias = getattr(settings, "PGBG_DATABASE", DEFAULT_ALIAS)
    check_alias(alias, "PGBG_DATABASE")
    return str(alias)


def check_alias(alias: object, setting: str) -> None:
    """A PostgreSQL alias of ``DATABASES``, or one clear ``ImproperlyConfigured``."""
    if not isinstance(alias, str) or alias not in settings.DATABASES:
        known = ", ".join(map(repr, settings.DATABASES)) or "none"
        raise ImproperlyConfigured(f"{setting} = {alias!r} is not an alias in DATABASES "
                                   f"(aliases: {known})")
    engine = settings.DATABASES[alias].get("ENGINE", "")
    if not engine.startswith("django.db.backends.postgresql") \
            and not engine.endswith(".postgresql"):
        raise ImproperlyConfigured(f"pgbg needs PostgreSQL: DATABASES[{alias!r}] uses "
                                   f"{engine or 'no ENGINE'}")


def _libpq_keywords() -> frozenset[str]:
    from psycopg import pq

    return frozenset(d.keyword.decode() for d in pq.Conninfo.get_defaults())


def database_url(alias: str) -> str:
    """A libpq connection string for ``DATABASES[alias]`` (password included: pass it
    to pgbg, never print it; ``pgbg.db.mask_url`` masks it)."""
    check_alias(alias, "the database alias")
    return conninfo(settings.DATABASES[alias], alias)


def conninfo(entry: dict[str, Any], alias: str = "default") -> str:
    """``database_url`` of one ``DATABASES`` entry."""
    from psycopg.conninfo import make_conninfo

    params: dict[str, Any] = {}
    keywords = _libpq_keywords()
    # OPTIONS may hold libpq parameters (sslmode, service, ...) beside Django's own
    # (isolation_level, pool, server_side_binding, ...): only the former reach libpq.
    for key, value in (entry.get("OPTIONS") or {}).items():
        if key in keywords and isinstance(value, (str, int)) and not isinstance(value, bool):
            params[key] = value
    for setting, keyword in (("NAME", "dbname"), ("USER", "user"), ("PASSWORD", "password"),
                             ("HOST", "host"), ("PORT", "port")):
        value = entry.get(setting)
        if value not in (None, ""):
            params[keyword] = value
    if "dbname" not in params and "service" not in params:
        raise ImproperlyConfigured(f"DATABASES[{alias!r}] names no database (NAME)")
    return make_conninfo("", **params)
