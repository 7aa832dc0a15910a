from django.contrib import admin

from gates.models import Secret


@admin.register(Secret)
class SecretAdmin(admin.ModelAdmin):
    """Names and dates only. Read-only: a value is set by its owner on /gates/secrets/, and a delete
    goes through gates.secrets so it is audited."""

    list_display = ("name", "owner", "updated_at", "updated_by_name")
    list_filter = ("owner",)
    search_fields = ("name", "owner__username")
    fields = ("owner", "name", "created_at", "updated_at", "updated_by_name")  # never ciphertext

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
