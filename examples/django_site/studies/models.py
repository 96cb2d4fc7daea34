from django.db import models


class Study(models.Model):
    """A study to import (OpenREM imports DICOM studies in the background)."""

    accession = models.CharField(max_length=64, unique=True)
    series = models.PositiveIntegerField(default=3)
    imported_series = models.PositiveIntegerField(default=0)
    imported_at = models.DateTimeField(null=True, blank=True)
    task_id = models.UUIDField(null=True, blank=True)  # the import queued for it

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return self.accession
