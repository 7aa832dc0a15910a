"""While the database is unreachable, every request gets a clean 503, never a 500 and a traceback.

Django's handler500: a database outage surfaces anywhere — in the bearer-token middleware, the
session, a view — and each layer turns an uncaught exception into a call of this handler. Only a
lost connection (OperationalError, InterfaceError) is an outage; any other error is a bug and stays
a 500. Nothing here touches the database. With DEBUG on, Django shows its debug page instead.
"""
from __future__ import annotations

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.views.defaults import server_error as django_server_error

from dashboard.api import is_api_path, json_error

RETRY_AFTER_S = 5
MESSAGE = "Gantry cannot reach its database right now; it reconnects by itself. Try again in a few seconds."


def server_error(request: HttpRequest) -> HttpResponse:
    if not isinstance(sys.exc_info()[1], (OperationalError, InterfaceError)):
        return django_server_error(request)
    if is_api_path(request.path):
        response = json_error(503, "database_unavailable", MESSAGE)
    else:
        response = HttpResponse(f"<!doctype html><title>Database unavailable</title><h1>Database unavailable</h1><p>{MESSAGE}</p>", status=503)
    response["Retry-After"] = str(RETRY_AFTER_S)
    return response
