"""pgbg in Django's admin: tasks (filters, search, every field, log lines, captured output,
links; actions terminate, retry and remove), the queue with why each task waits, and the
workers. Fields are read-only: pgbg's rows change only through pgbg's API; the actions
need the task model's change permission."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.html import format_html, format_html_join

import pgbg
from pgbg.contrib.django.models import Task, TaskLog, Worker

OUTPUT = "output"  # the level of captured stdout/stderr in pgbg.task_log


class ReadOnly(admin.ModelAdmin):
    """Nothing is added, edited or deleted through the admin."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields] + list(self.readonly_fields)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        pass  # read-only: never written

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra = {"show_save": False, "show_save_and_continue": False,
                 "show_save_and_add_another": False, "show_delete": False,
                 **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra)


@admin.register(Task)
class TaskAdmin(ReadOnly):
    list_display = ["id", "task_type", "status", "priority", "queued_at", "started_at",
                    "finished_at", "attempt", "hostname", "pid", "info"]
    list_filter = ["status", "task_type", "queued_at", "finished_at"]
    search_fields = ["=id", "task_type"]
    ordering = ["-queued_at"]
    date_hierarchy = "queued_at"
    list_per_page = 50
    show_full_result_count = False  # counting a long history is slow; the pages are not
    actions = ["terminate", "retry", "remove"]
    readonly_fields = ["log_lines", "captured_output", "links"]
    change_list_template = "admin/pgbg/task/change_list.html"
    fieldsets = [
        (None, {"fields": ["id", "task_type", "func", "args", "kwargs", "status", "info",
                           "result", "error"]}),
        ("Limits and options", {"fields": [
            "priority", "num_proc", "num_of_task_type", "max_attempts", "timeout",
            "run_at", "unique_key", "unique_running", "retry_on", "retry_backoff", "periodic",
            "period"]}),
        ("Run", {"fields": [
            "queued_at", "started_at", "finished_at", "attempt", "worker_id", "hostname",
            "pid", "exit_code", "signal", "cancel_requested_at", "cancel_requested_by",
            "complete", "completed_successfully"]}),
        ("Log", {"fields": ["log_lines", "captured_output", "links"]}),
    ]

    @admin.display(description="log lines")
    def log_lines(self, task: Task) -> str:
        lines = TaskLog.objects.filter(task_id=task.id).exclude(level=OUTPUT).order_by("id")
        return format_html("<table>{}</table>", format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((line.at, line.level, line.message) for line in lines))) if lines else "-"

    @admin.display(description="captured output")
    def captured_output(self, task: Task) -> str:
        chunks = TaskLog.objects.filter(task_id=task.id, level=OUTPUT).order_by("id")
        text = "".join(chunk.message for chunk in chunks)
        return format_html("<pre>{}</pre>", text) if text else "-"

    @admin.display(description="links")
    def links(self, task: Task) -> str:
        links = pgbg.get_task_links(task.id)
        return format_html_join(", ", "{}: {}", links) if links else "-"

    @admin.action(permissions=["change"], description="Terminate selected tasks")
    def terminate(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        done = 0
        for task in queryset:
            if pgbg.TaskStatus(task.status).is_terminal:
                continue
            pgbg.terminate_background(task.id, wait=False)
            done += 1
        self.message_user(request, f"{done} task(s) terminated or being terminated; "
                                   f"{queryset.count() - done} had already finished")

    @admin.action(permissions=["change"], description="Retry selected tasks")
    def retry(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._each(request, queryset, pgbg.retry_task, "queued again")

    @admin.action(permissions=["change"], description="Remove selected tasks from the queue")
    def remove(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._each(request, queryset, pgbg.remove_task_from_queue, "removed from the queue")

    def _each(self, request: HttpRequest, queryset: QuerySet[Task], action: Any,
              done: str) -> None:
        count = 0
        for task in queryset:
            try:
                action(task.id)
                count += 1
            except pgbg.PgbgError as exc:  # one line each: already started, not failed, ...
                self.message_user(request, str(exc), messages.WARNING)
        if count:
            self.message_user(request, f"{count} task(s) {done}")

    def get_urls(self) -> list[URLPattern]:
        queue = path("queue/", self.admin_site.admin_view(self.queue_view),
                     name="pgbg_task_queue")
        return [queue, *super().get_urls()]

    def queue_view(self, request: HttpRequest) -> HttpResponse:
        """The queue in the order workers consider it, with why each task still waits."""
        if not self.has_view_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        context = {**self.admin_site.each_context(request), "opts": self.model._meta,
                   "title": "Queued tasks", "queued": pgbg.get_queued_tasks(),
                   "workers": pgbg.list_workers()}
        return TemplateResponse(request, "admin/pgbg/queue.html", context)


@admin.register(Worker)
class WorkerAdmin(ReadOnly):
    list_display = ["hostname", "pid", "concurrency", "started_at", "heartbeat_at", "id"]
    search_fields = ["hostname"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
