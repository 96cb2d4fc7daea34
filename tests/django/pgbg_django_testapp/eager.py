"""A task module that queries the database when imported: the fork server that preloads
it holds a Django connection, which every child forked afterwards must leave alone."""

from __future__ import annotations

import os
from typing import Any

from django.db import connection
from django.tasks import task

from studies.models import Study

STUDIES_AT_IMPORT = Study.objects.count()


@task
def backend_pid() -> dict[str, Any]:
    connection.ensure_connection()
    return {"backend_pid": connection.connection.info.backend_pid, "pid": os.getpid(),
            "count": Study.objects.count()}
