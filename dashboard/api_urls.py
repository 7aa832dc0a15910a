"""The JSON API, version 2. Each app adds its routes here."""
from django.urls import include, path

from dashboard import api_views

urlpatterns = [
    path("me", api_views.me, name="api_me"),
    path("openapi.json", api_views.openapi, name="api_openapi"),
    path("", include("serving.api_urls")),
    path("", include("gates.api_urls")),
]
