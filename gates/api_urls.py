from django.urls import path

from gates import api, baseline_api, gate_run_api, preflight_api

urlpatterns = [
    path("secrets", api.secrets_collection, name="api_secrets"),
    path("secrets/<str:name>", api.secret_item, name="api_secret"),
    path("preflight", preflight_api.run_preflight, name="api_preflight"),
    path("preflight/vram-fit", preflight_api.vram_fit, name="api_vram_fit"),
    path("preflight/<int:pk>", preflight_api.preflight_report, name="api_preflight_report"),
    path("preflight/<int:pk>/force", preflight_api.force_preflight, name="api_preflight_force"),
    path("gates/evalsets", baseline_api.evalsets_collection, name="api_evalsets"),
    path("gates/baselines", baseline_api.baselines_collection, name="api_baselines"),
    path("gates/baselines/<int:pk>", baseline_api.baseline_item, name="api_baseline"),
    path("gates/baselines/<int:pk>/approve", baseline_api.approve, name="api_baseline_approve"),
    path("gates/baselines/<int:pk>/reject", baseline_api.reject, name="api_baseline_reject"),
    path("gates/baselines/<int:pk>/export", baseline_api.export, name="api_baseline_export"),
    path("gates/runs", gate_run_api.runs_collection, name="api_gate_runs"),
    path("gates/runs/<int:pk>", gate_run_api.run_item, name="api_gate_run"),
    path("gates/runs/<int:pk>/signoff", gate_run_api.sign_off, name="api_gate_run_signoff"),
    path("gates/runs/<int:pk>/reject", gate_run_api.reject, name="api_gate_run_reject"),
]
