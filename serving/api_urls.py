from django.urls import path

from serving import api

urlpatterns = [
    path("serve/models", api.models_collection, name="api_serve_models"),
    path("serve/models/<str:model_key>", api.model_item, name="api_serve_model"),
    path("serve/models/<str:model_key>/rollback", api.model_rollback, name="api_serve_rollback"),
    path("serve/status", api.serve_status, name="api_serve_status"),
]
