"""A small shop that uses pgbg for its background work — the embedding example.

The shop owns its tables (``shop/models.py``) and its Alembic history
(``migrations/``); pgbg owns the ``pgbg`` schema and its own history, with its version
table inside that schema, so the two never collide.
"""
