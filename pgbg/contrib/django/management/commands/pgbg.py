"""``manage.py pgbg …``: pgbg's command line (``worker``, ``ls``, ``show``, ``top``, …) in a
Django project, on Django's database (``PGBG_DATABASE``), with Django set up in the worker
and in its fork server so task modules may import models."""

from __future__ import annotations

import argparse
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "pgbg's command line on this project's database: manage.py pgbg --help"
    requires_system_checks: list[str] = []  # the worker checks what it runs
    requires_migrations_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER,
                            help="a pgbg command and its options, e.g. worker -c 4")

    def run_from_argv(self, argv: list[str]) -> None:
        """Everything after ``pgbg`` goes to pgbg's own parser (its --help included), but
        Django's ``--settings`` and ``--pythonpath``, wherever they are (before ``--``):
        Django has applied them already."""
        run(without_django_options(argv[2:]),
            f"{os.path.basename(argv[0])} {argv[1]}")  # exits with its code

    def handle(self, *args: str, **options: Any) -> None:
        """``call_command("pgbg", "ls", "--json")``: a failure is a ``CommandError``."""
        try:
            run(list(args), "manage.py pgbg")
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise CommandError(f"pgbg {' '.join(args)} exited with {exc.code}",
                                   returncode=exc.code if isinstance(exc.code, int) else 1
                                   ) from None


DJANGO_OPTIONS = ("--settings", "--pythonpath")  # what ManagementUtility reads itself


def without_django_options(args: list[str]) -> list[str]:
    """``args`` without Django's own options (``--settings=X`` or ``--settings X``)."""
    kept: list[str] = []
    rest = iter(args)
    for arg in rest:
        if arg == "--":
            kept.append(arg)
            kept.extend(rest)
            break
        if arg in DJANGO_OPTIONS:
            next(rest, None)  # its value
        elif not arg.startswith(tuple(f"{option}=" for option in DJANGO_OPTIONS)):
            kept.append(arg)
    return kept


def run(args: list[str], prog_name: str) -> None:
    """pgbg's Typer app on ``args``; raises ``SystemExit`` with its exit code."""
    from pgbg.cli.common import app
    from pgbg.contrib.django import forking

    # The fork server inherits the environment: with PGBG_DJANGO=1 (and the same
    # DJANGO_SETTINGS_MODULE) it sets Django up before it forks any task's child.
    os.environ[forking.ENV] = "1"
    app(args=args, prog_name=prog_name)
