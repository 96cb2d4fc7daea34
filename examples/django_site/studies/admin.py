from django.contrib import admin

from studies.models import Study


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ["accession", "series", "imported_series", "imported_at", "task_id"]
    search_fields = ["accession"]
