"""EvalSet: an uploaded JSONL eval set, stored once by content (gates/evalsets.py writes the file)."""
from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from serving.models import AppendOnly

# Names of eval sets and baseline families go into URLs, file names of exports and CI logs.
GATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
GATE_NAME_RULE = "A name is letters, digits and . _ -, starting with a letter or digit, at most 100 characters (e.g. grammar-tutor)."


def validate_gate_name(name: str) -> None:
    if not isinstance(name, str) or not GATE_NAME.fullmatch(name):
        raise ValidationError(GATE_NAME_RULE, code="invalid_name")


class EvalSetQuerySet(models.QuerySet):
    def with_dvc_hash(self, md5: str) -> "EvalSetQuerySet":
        """Sets a baseline's eval_set_dvc_hash names, whichever DVC version wrote its .dvc file."""
        return self.filter(models.Q(md5=md5) | models.Q(legacy_md5=md5))


class EvalSet(AppendOnly):
    """One eval set as uploaded. The file lies at VAR_DIR/evalsets/<md5>.jsonl, read-only; the row
    is never edited either, so what a gate graded against stays what it was."""

    name = models.CharField(max_length=100, validators=[validate_gate_name])
    md5 = models.CharField(max_length=32, db_index=True, help_text="DVC 3's md5: the file's bytes as they are; also its file name.")
    legacy_md5 = models.CharField(max_length=32, db_index=True, help_text="DVC 2's md5 (CRLF read as LF in a text file).")
    size_bytes = models.PositiveBigIntegerField()
    rows = models.PositiveIntegerField()
    buckets = models.JSONField(default=dict, help_text="{bucket name: number of rows in it}.")
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    uploaded_by_name = models.CharField(max_length=150)
    created_at = models.DateTimeField(default=timezone.now)

    objects = EvalSetQuerySet.as_manager()

    class Meta:
        app_label = "gates"
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["name", "md5"], name="unique_evalset_content_per_name")]

    def __str__(self) -> str:
        return f"{self.name} ({self.md5[:8]})"

    @property
    def bucket_rows(self) -> list[tuple[str, int]]:
        return sorted(self.buckets.items())
