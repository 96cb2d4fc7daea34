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

    if plan is None:  # ``flush`` (between TransactionTestCase tests): not a migrate
        return
    if using == conf.database_alias():
        migration.upgrade(using)
        transactions.install(using)
