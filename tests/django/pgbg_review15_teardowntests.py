"""Tests run by the site's own test runner (``manage.py test``) for
tests/django/test_review_15.py: one passing test that uses pgbg outside atomic()."""

from __future__ import annotations

from django.test import TransactionTestCase

import pgbg
from studies.models import Study
from studies.tasks import import_study


class OutsideAtomicTests(TransactionTestCase):
    def test_an_import_queued_in_autocommit(self) -> None:
        study = Study.objects.create(accession="TD-1", series=1)
        result = import_study.enqueue(study.pk)  # on pgbg's own connection
        self.assertEqual(pgbg.get_task(result.id).args, [study.pk])
