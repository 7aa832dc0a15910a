"""Users' secrets (write-only, encrypted at rest by gates/secrets.py) and the gates app's permissions."""
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from gates.preflight.config import SECRET_NAME_RE


class GatePermissions(models.Model):
    """Holds the gates permissions until the eval-gate models exist.

    Unmanaged and table-less: Django still creates its permissions, which the reviewers group gets.
    """

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("approve_baseline", "Can approve or reject a proposed eval baseline")]


# A secret's name is the environment variable replicas see, so it follows POSIX's portable rule.
SECRET_NAME = SECRET_NAME_RE  # one rule for the store and for a spec's preflight.secrets
SECRET_NAME_RULE = (
    "A secret's name is the environment variable replicas see: capital letters, digits and _, "
    "not starting with a digit, at most 128 characters (e.g. OPENAI_API_KEY)."
)


def validate_secret_name(name: str) -> None:
    if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
        raise ValidationError(SECRET_NAME_RULE, code="invalid_name")


class Secret(models.Model):
    """One user's secret, encrypted at rest (gates/secrets.py holds the keys). Write-only: nothing
    shows a value again; pages, the API and the admin see the name and dates."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(max_length=128, validators=[validate_secret_name])
    ciphertext = models.TextField(editable=False)  # a Fernet token (url-safe base64)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Who last set it, as a name (the audit log keeps names the same way): shown without a join.
    updated_by_name = models.CharField(max_length=150)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_secret_name_per_owner")]

    def __str__(self) -> str:
        return f"{self.name} of {self.owner}"
