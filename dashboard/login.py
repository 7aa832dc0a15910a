"""The login rate limit's two pieces that are Gantry's own: which log-ins it counts, and the page a
locked-out person sees. django-axes does the counting (settings: GANTRY_LOGIN_FAILURE_LIMIT and
GANTRY_LOGIN_COOLOFF_MINUTES)."""
from __future__ import annotations

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


class RateLimitedBackend(AxesStandaloneBackend):
    """Counts and refuses log-ins that come over HTTP. A log-in with no request (the shell, a
    management command) cannot be repeated from the network, so there is nothing to limit; axes'
    own backend would raise there instead. API tokens never pass through here at all."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def client_address(request: HttpRequest) -> str:
    """The address a failure is counted against: the TCP peer only. X-Forwarded-For is whatever the
    client wrote unless a proxy overwrites it, and a fresh one per attempt would escape the limit."""
    return request.META.get("REMOTE_ADDR", "")


def lockout_message(username: str) -> str:
    minutes = settings.GANTRY_LOGIN_COOLOFF_MINUTES
    who = f"“{username}”" if username else "this account"
    return (
        f"Too many failed log-ins for {who} from your address: logging in is blocked for {minutes} minutes. "
        "Wait and try again, or ask an administrator to unlock it (manage.py axes_reset_username)."
    )


def locked_out(request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict | None = None) -> HttpResponse:
    """The login page again, saying why and for how long, with 429 Too Many Requests."""
    username = (credentials or {}).get("username") or request.POST.get("username", "")
    context = {
        "form": AuthenticationForm(request, initial={"username": username}),
        "lockout": lockout_message(username),
        "next": request.POST.get("next", ""),
    }
    return render(request, "registration/login.html", context, status=429)
