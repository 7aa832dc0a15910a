from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from dashboard import views
from health import views as health_views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("settings/tokens/", views.tokens, name="tokens"),
    path("settings/tokens/<int:pk>/revoke", views.revoke_token, name="revoke_token"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", health_views.metrics, name="metrics"),
    path("serving/", include("serving.urls")),
    path("gates/", include("gates.urls")),
    path("health/", include("health.urls")),
    path("api/v2/", include("dashboard.api_urls")),
    path("admin/", admin.site.urls),
]
handler404 = "dashboard.views.not_found"
handler500 = "dashboard.outage.server_error"
