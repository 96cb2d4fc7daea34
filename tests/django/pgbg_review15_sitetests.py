"""Tests run by the site's own test runner (``manage.py test --parallel 2``) for
tests/django/test_review_15.py: pgbg must use each parallel worker's test database."""

from __future__ import annotations

from django.db import connection
from django.test import TestCase
from psycopg.conninfo import conninfo_to_dict

from pgbg import db


class FirstTests(TestCase):
    def test_pgbg_uses_this_processs_test_database(self) -> None:
        self.assertEqual(conninfo_to_dict(db.database_url())["dbname"],
                         connection.settings_dict["NAME"])


class SecondTests(TestCase):
    def test_pgbg_uses_this_processs_test_database(self) -> None:
        self.assertEqual(conninfo_to_dict(db.database_url())["dbname"],
                         connection.settings_dict["NAME"])
