"""A view that queues imports, and a page of the running and queued tasks with a
Terminate button."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

import pgbg
from studies.models import Study
from studies.tasks import IMPORT_LIMITS, import_study, import_study_now


@require_POST
def queue_imports(request: HttpRequest) -> HttpResponse:
    """Create the studies named in ``accession`` and queue one import each, in one
    transaction: a study exists if and only if its import is queued."""
    accessions = [a.strip() for a in request.POST.getlist("accession") if a.strip()]
    try:
        series = int(request.POST.get("series", "3"))
    except ValueError:
        return HttpResponseBadRequest("series must be a whole number")
    if not 0 <= series <= 2_147_483_647:  # the column's range
        return HttpResponseBadRequest("series must be from 0 to 2147483647")
    style = request.POST.get("style", "django")
    with transaction.atomic():
        for accession in accessions:
            study = Study.objects.create(accession=accession, series=series)
            if style == "openrem":  # pgbg's own API joins this transaction too
                queued = pgbg.run_in_background_with_limits(
                    import_study_now, "import", 0, IMPORT_LIMITS, study.pk)
                study.task_id = queued.id
            else:
                study.task_id = import_study.enqueue(study.pk).id
            study.save(update_fields=["task_id"])
    messages.info(request, f"queued {len(accessions)} import(s)")
    return redirect("tasks")


def task_page(request: HttpRequest) -> HttpResponse:
    """Running and queued tasks; for each queued one, why it still waits."""
    running = pgbg.list_tasks(status=["running"], limit=200)
    queued = pgbg.get_queued_tasks()
    return render(request, "studies/tasks.html", {
        "running": running, "queued": queued, "studies": Study.objects.all(),
    })


@require_POST
@permission_required("pgbg.change_task", raise_exception=True)
def terminate(request: HttpRequest, task_id: str) -> HttpResponse:
    try:
        task = pgbg.terminate_background(task_id, wait=False)
    except pgbg.TaskNotFound:
        raise Http404(f"no task {task_id}") from None
    messages.info(request, f"terminating {task.id} ({task.status})")
    return redirect("tasks")
