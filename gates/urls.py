from django.urls import path

from gates import preflight_views, secret_views

app_name = "gates"
urlpatterns = [
    path("", preflight_views.index, name="index"),
    path("preflight/<int:pk>/", preflight_views.report, name="preflight_report"),
    path("preflight/<int:pk>/force", preflight_views.force, name="preflight_force"),
    path("preflight/model/<str:model_key>", preflight_views.run_for_model, name="preflight_model"),
    path("secrets/", secret_views.secrets, name="secrets"),
    path("secrets/<str:name>/delete", secret_views.secret_delete, name="secret_delete"),
]
