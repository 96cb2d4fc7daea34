"""The Django app ``pgbg.contrib.django`` (label ``pgbg``)."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class PgbgConfig(AppConfig):
    name = "pgbg.contrib.django"
    label = "pgbg"
    verbose_name = "Background tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from pgbg.contrib.django import conf, transactions

        alias = conf.database_alias()
        transactions.install(alias)
        post_migrate.connect(_upgrade_after_migrate, sender=self,
                             dispatch_uid="pgbg.contrib.django.upgrade")


def _upgrade_after_migrate(sender: AppConfig, using: str, plan: Any = None,
                           **kwargs: Any) -> None:
    """Every ``manage.py migrate`` brings pgbg's schema up to date, so a pgbg upgrade
    (new Alembic revisions, no new Django migration) needs no extra step. pgbg is pointed
    at the database again: Django's test runner migrates a test database it renamed the
    alias to after ``ready()``, and pgbg must use that one."""
    from pgbg.contrib.django import conf, migration, transactions

    if using != conf.database_alias():
        return
    if plan is None:  # ``flush`` (between TransactionTestCase tests): empty pgbg's too
        flush(using)
        return
    migration.upgrade(using)
    transactions.install(using)


def flush(alias: str) -> None:
    """``flush`` emptied Django's tables (unmanaged models' excepted): pgbg's tasks go too,
    on Django's connection (``manage.py flush``, ``TransactionTestCase``)."""
    from django.db import connections, transaction

    import pgbg
    from pgbg import api, queries

    try:
        with api.database_errors(), transaction.atomic(using=alias):
            api.run(queries.task_flush(), connections[alias])
    except pgbg.SchemaMissing:  # a database pgbg was never migrated on: nothing to empty
        pass
