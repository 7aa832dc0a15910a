from django.urls import path

from gates import baseline_views, evalset_views, gate_run_views, preflight_views, secret_views

app_name = "gates"
urlpatterns = [
    path("", preflight_views.index, name="index"),
    path("preflight/<int:pk>/", preflight_views.report, name="preflight_report"),
    path("preflight/<int:pk>/force", preflight_views.force, name="preflight_force"),
    path("preflight/model/<str:model_key>", preflight_views.run_for_model, name="preflight_model"),
    path("secrets/", secret_views.secrets, name="secrets"),
    path("secrets/<str:name>/delete", secret_views.secret_delete, name="secret_delete"),
    path("evalsets/", evalset_views.evalsets, name="evalsets"),
    path("baselines/", baseline_views.index, name="baselines"),
    path("baselines/propose", baseline_views.propose, name="baseline_propose"),
    path("baselines/<int:pk>/", baseline_views.detail, name="baseline_detail"),
    path("baselines/<int:pk>/approve", baseline_views.approve, name="baseline_approve"),
    path("baselines/<int:pk>/reject", baseline_views.reject, name="baseline_reject"),
    path("baselines/<int:pk>/export", baseline_views.export, name="baseline_export"),
    path("runs/", gate_run_views.runs, name="gate_runs"),
    path("runs/<int:pk>/", gate_run_views.detail, name="gate_run"),
    path("runs/<int:pk>/signoff", gate_run_views.sign_off, name="gate_run_signoff"),
    path("runs/<int:pk>/reject", gate_run_views.reject, name="gate_run_reject"),
]
