"""The site's own tests, run by Django's test runner (``manage.py test``): pgbg follows the
test database, and a TestCase's transaction rolls its tasks back with everything else."""

from __future__ import annotations

from django.db import connection
from django.test import TestCase
from psycopg.conninfo import conninfo_to_dict

import pgbg
from pgbg import db
from studies.models import Study
from studies.tasks import import_study


class ImportTests(TestCase):
    def test_an_import_is_queued_in_the_test_database(self) -> None:
        self.assertEqual(conninfo_to_dict(db.database_url())["dbname"],
                         connection.settings_dict["NAME"])
        study = Study.objects.create(accession="T-1", series=1)
        result = import_study.enqueue(study.pk)
        self.assertEqual(import_study.get_result(result.id).args, [study.pk])
        self.assertEqual([q.task_id for q in pgbg.get_queued_tasks()], [result.id])
