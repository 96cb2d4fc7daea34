"""The background work: importing a study, one series at a time.

Two ways to declare the same task: a ``django.tasks`` task (``import_study.enqueue(pk)``),
and a plain function queued with pgbg's own API, as OpenREM's code does
(``pgbg.run_in_background_with_limits(import_study_now, "import", 0, {"import": 1}, pk)``).
Either way at most one import runs at a time, whatever the number of workers.
"""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.tasks import task
from django.utils import timezone

import pgbg
from studies.models import Study

IMPORT_LIMITS = {"import": 1}


@task(task_type="import", num_of_task_type=IMPORT_LIMITS)
def import_study(study_id: int) -> dict[str, int]:
    return import_study_now(study_id)


def import_study_now(study_id: int) -> dict[str, int]:
    study = Study.objects.get(pk=study_id)
    pgbg.record_task_related("study", study.pk)
    pgbg.record_task_info(f"importing {study.accession}")
    hold = Path(settings.STUDIES_HOLD_FILE) if settings.STUDIES_HOLD_FILE else None
    for number in range(study.imported_series + 1, study.series + 1):
        while hold is not None and hold.exists():
            time.sleep(0.05)
        time.sleep(settings.STUDIES_SECONDS_PER_SERIES)  # reading and storing the series
        with transaction.atomic():
            Study.objects.filter(pk=study.pk).update(imported_series=number)
        pgbg.record_task_info(f"series {number}/{study.series}")
        print(f"imported series {number} of {study.accession}")
    Study.objects.filter(pk=study.pk).update(imported_at=timezone.now())
    return {"study": study.pk, "series": study.series}
