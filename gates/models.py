from django.db import models


class GatePermissions(models.Model):
    """Holds the gates permissions until the eval-gate models exist.

    Unmanaged and table-less: Django still creates its permissions, which the reviewers group gets.
    """

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("approve_baseline", "Can approve or reject a proposed eval baseline")]
