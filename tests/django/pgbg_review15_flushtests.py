"""Tests run by the site's own test runner (``manage.py test``) for
tests/django/test_review_15.py: TransactionTestCase flushes the database between tests,
and pgbg's tasks must go with the rest of the data."""

from __future__ import annotations

from django.test import TransactionTestCase

import pgbg
from studies.models import Study
from studies.tasks import import_study


class FlushTests(TransactionTestCase):
    def test_a_queues_an_import(self) -> None:
        study = Study.objects.create(accession="TT-1", series=1)
        import_study.enqueue(study.pk)  # autocommit: committed at once
        self.assertEqual(len(pgbg.get_queued_tasks()), 1)

    def test_b_starts_from_an_empty_database(self) -> None:
        self.assertFalse(Study.objects.exists())  # flushed
        self.assertEqual(pgbg.get_queued_tasks(), [])  # and the tasks?
