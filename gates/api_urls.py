from django.urls import path

from gates import api, preflight_api

urlpatterns = [
    path("secrets", api.secrets_collection, name="api_secrets"),
    path("secrets/<str:name>", api.secret_item, name="api_secret"),
    path("preflight", preflight_api.run_preflight, name="api_preflight"),
    path("preflight/<int:pk>", preflight_api.preflight_report, name="api_preflight_report"),
    path("preflight/<int:pk>/force", preflight_api.force_preflight, name="api_preflight_force"),
]
