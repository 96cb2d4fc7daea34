"""The pgbg dashboard and ``/metrics``: ``create_app()`` is an ASGI application.

``pgbg web`` runs it with uvicorn; any ASGI server can (``pgbg.web:create_app`` with
``--factory``). Needs the ``web`` extra: ``pip install 'pgbg[web]'``.
"""

from __future__ import annotations

from typing import Any


def create_app(read_only: bool = False, user: str | None = None, password: str | None = None,
               **options: Any) -> Any:
    """The dashboard as an ASGI app; see ``pgbg.web.app.create_app`` for the options."""
    from pgbg.web.app import create_app as create

    return create(read_only, user, password, **options)


__all__ = ["create_app"]
