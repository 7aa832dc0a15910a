from django.db import models


class State(models.TextChoices):
    QUEUED = "QUEUED"
    DEPLOYING = "DEPLOYING"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    DELETING = "DELETING"
    DELETED = "DELETED"


# What the reconciler looks at again within about a second rather than at the next beat.
MOVING_STATES = frozenset({State.DEPLOYING, State.DELETING})
LIVE_STATES = frozenset({State.QUEUED, State.DEPLOYING, State.RUNNING, State.FAILED})
# Nothing will happen to a model in these states until a person acts: pages stop polling them.
TERMINAL_STATES = frozenset({State.RUNNING, State.FAILED, State.DELETED})

# The only moves the design allows (shared/DESIGN.md, "States"). DEPLOYING -> DEPLOYING is a
# re-apply of a model whose spec changed while it deployed; QUEUED -> FAILED is a deploy that
# never became schedulable before its deadline.
ALLOWED_MOVES: dict[str, frozenset[str]] = {
    State.QUEUED: frozenset({State.DEPLOYING, State.FAILED, State.DELETING}),
    State.DEPLOYING: frozenset({State.RUNNING, State.FAILED, State.DEPLOYING, State.DELETING}),
    State.RUNNING: frozenset({State.DEPLOYING, State.DELETING}),
    State.FAILED: frozenset({State.QUEUED, State.DELETING}),
    State.DELETING: frozenset({State.DELETED}),
    State.DELETED: frozenset({State.QUEUED}),
}


class EventKind(models.TextChoices):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    SCALED = "SCALED"
    AUTOSCALED = "AUTOSCALED"
    ROLLBACK = "ROLLBACK"
    DELETE_REQUESTED = "DELETE_REQUESTED"
    PENDING_RESOURCES = "PENDING_RESOURCES"
    APPLIED = "APPLIED"
    APPLY_FAILED = "APPLY_FAILED"
    SERVE_STATUS = "SERVE_STATUS"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    DRIFT = "DRIFT"
    DELETE_FAILED = "DELETE_FAILED"
    DELETED = "DELETED"
    UNKNOWN_APPLICATION = "UNKNOWN_APPLICATION"
    SERVE_UNAVAILABLE = "SERVE_UNAVAILABLE"
    NODE_LOST = "NODE_LOST"
    RECONCILE_ERROR = "RECONCILE_ERROR"
    LEAK_REMOVED = "LEAK_REMOVED"
    PREFLIGHT = "PREFLIGHT"
    PREFLIGHT_FAILED = "PREFLIGHT_FAILED"
    PREFLIGHT_FORCED = "PREFLIGHT_FORCED"
    ENGINE_FALLBACK = "ENGINE_FALLBACK"
    RETRY = "RETRY"
