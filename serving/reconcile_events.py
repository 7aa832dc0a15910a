"""What a reconcile tick says on a model: Serve's words, shortened where they run long, logged
once per distinct message."""
from __future__ import annotations

from serving.cluster.serve import AppStatus
from serving.models import ServeModel


def tail(message: str, limit: int = 2000) -> str:
    """A long message cut in the middle: Serve's deploy failures open with what failed and end with
    the engine's exception; the traceback between them is what a person can spare."""
    if len(message) <= limit:
        return message
    head = message[: limit // 3].rstrip()
    return f"{head}\n…\n{message[-(limit - len(head)):].lstrip()}"


def serve_says(app: AppStatus) -> str:
    return f"Serve reports {app.status}: {tail(app.messages) or 'no message yet'}"


def observe(model: ServeModel, kind: str, message: str) -> None:
    """Log what Serve or the cluster says, once per distinct message, so a long wait is one event.
    Written only if the model is still as read: a changed model is observed afresh next pass."""
    if model.last_observation == message:
        return
    if model.update_if_unchanged(last_observation=message):
        model.log(kind, message)
