"""ServeModel (desired state), ServeEvent (append-only history), ServeRevision (every applied config)."""
from __future__ import annotations

import hashlib
import json

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from serving.choices import ALLOWED_MOVES, LIVE_STATES, TERMINAL_STATES, EventKind, State
from serving.engine_figures import EngineReading, figures


class ModelChanged(Exception):
    """The row is no longer as the reconciler read it: a user's change arrived meanwhile. That
    change wins; the reconciler writes nothing and takes the model up again on its next pass."""


class IllegalTransition(Exception):
    """A move the state machine does not allow; the API turns it into a 409."""

    def __init__(self, model: "ServeModel", to_state: str):
        self.from_state, self.to_state = model.state, to_state
        super().__init__(f"{model.model_id} is {model.state}; it cannot become {to_state}.")


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ServeModelQuerySet(models.QuerySet):
    def visible_to(self, user) -> "ServeModelQuerySet":
        return self if user.is_staff else self.filter(owner=user)

    def live(self) -> "ServeModelQuerySet":
        return self.filter(state__in=LIVE_STATES)

    def reconcilable(self) -> "ServeModelQuerySet":
        return self.exclude(state=State.DELETED)

    def waiting_on_serve(self) -> "ServeModelQuerySet":
        """Models someone is waiting for Serve to act on: moving ones, and RUNNING ones with a
        change not yet applied (is_settled's other half)."""
        return self.filter(models.Q(state__in=[State.QUEUED, State.DEPLOYING, State.DELETING]) | models.Q(state=State.RUNNING) & ~models.Q(change_reason=""))

    def with_last_event(self) -> "ServeModelQuerySet":
        """Each model's newest event in the same query, so a list of N models is still one query."""
        newest = ServeEvent.objects.filter(model=models.OuterRef("pk")).order_by("-created_at", "-id")
        return self.annotate(
            last_event_kind=models.Subquery(newest.values("kind")[:1]),
            last_event_message=models.Subquery(newest.values("message")[:1]),
            last_event_at=models.Subquery(newest.values("created_at")[:1]),
        )


class ServeModel(models.Model):
    """One user's model deployment: what they asked for (spec) and where it stands (state)."""

    model_key = models.CharField(max_length=200, unique=True, help_text="Stable key in URLs and the Serve application name.")
    model_id = models.CharField(max_length=200, unique=True, help_text="Public id clients put in OpenAI calls.")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="serve_models")
    suffix = models.CharField(max_length=64)
    spec_yaml = models.TextField(help_text="The spec as the user last submitted it.")
    resolved_spec = models.JSONField(help_text="The desired, resolved spec (ResolvedSpec.as_dict()).")
    generation = models.PositiveIntegerField(default=1, help_text="Bumped by every change a user asks for.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    error_summary = models.TextField(blank=True)
    # What the reconciler last applied, and what it must not retry by itself.
    applied_config_hash = models.CharField(max_length=64, blank=True)
    rejected_config_hash = models.CharField(max_length=64, blank=True)
    last_observation = models.TextField(blank=True, help_text="Last Serve message recorded, so each is logged once.")
    change_reason = models.CharField(max_length=200, blank=True, help_text="Why the desired spec last changed; becomes the next revision's reason.")
    deadline = models.DateTimeField(null=True, blank=True, help_text="When a deploy that has not become RUNNING fails.")
    engine_override = models.CharField(max_length=8, blank=True, help_text="'cpu' when the CUDA probe moved this model to the CPU engine; '' follows the cluster.")
    observed_target_replicas = models.PositiveIntegerField(
        null=True, blank=True, help_text="The replica count Serve's autoscaler last aimed at, so each decision is logged once."
    )
    state_changed_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ServeModelQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]
        constraints = [models.UniqueConstraint(fields=["owner", "suffix"], name="unique_suffix_per_owner")]
        indexes = [
            models.Index(fields=["owner", "state"]),
            # The list API pages newest first by a (created_at, id) keyset, per owner or for admins.
            models.Index(fields=["owner", "-created_at", "-id"], name="serving_model_owner_newest"),
            models.Index(fields=["-created_at", "-id"], name="serving_model_newest"),
        ]

    def __str__(self) -> str:
        return self.model_id

    @property
    def num_replicas(self) -> int:
        return int(self.resolved_spec["num_replicas"])

    @property
    def autoscaling(self) -> dict:
        """The spec's autoscaling bounds with Serve's defaults filled in; {} for a fixed count."""
        return self.resolved_spec.get("autoscaling") or {}

    @property
    def gpus_per_replica(self) -> int:
        return int(self.resolved_spec["gpus_per_replica"])

    @property
    def placed_gpus_per_replica(self) -> int:
        """The GPUs each replica really takes: none once the CUDA probe moved it to the CPU engine."""
        return 0 if self.engine_override == "cpu" else self.gpus_per_replica

    @property
    def gpus_needed(self) -> int:
        return self.num_replicas * self.gpus_per_replica

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def is_settled(self) -> bool:
        """Nothing will change until a person acts: a terminal state and no change waiting to be
        applied (a RUNNING model being scaled stays RUNNING until the reconciler applies it)."""
        return self.is_terminal and not (self.state == State.RUNNING and self.change_reason)

    @property
    def is_live(self) -> bool:
        return self.state in LIVE_STATES

    def move_to(
        self,
        to_state: str,
        kind: str,
        message: str,
        *,
        actor=None,
        error: str | None = None,
        expect_generation: int | None = None,
        also: dict | None = None,
        **payload,
    ) -> "ServeEvent":
        """The one place a model changes state: checks the move, writes it, and logs it in one transaction.

        The write is a conditional UPDATE of the state (and `expect_generation`, when given) this
        object holds, touching only the state fields and `also`: a move decided on a row that
        changed meanwhile raises ModelChanged and writes nothing, so it can never overwrite a
        user's delete, scale or update. `error` sets error_summary (FAILED says why); any other
        move clears it.
        """
        if to_state not in ALLOWED_MOVES[self.state]:
            raise IllegalTransition(self, to_state)
        now = timezone.now()
        fields = {"state": to_state, "state_changed_at": now, "error_summary": error or "", "updated_at": now, **(also or {})}
        with transaction.atomic():
            rows = ServeModel.objects.filter(pk=self.pk, state=self.state)
            if expect_generation is not None:
                rows = rows.filter(generation=expect_generation)
            if not rows.update(**fields):
                raise ModelChanged(f"{self.model_id} changed since it was read; not moving it to {to_state}.")
            from_state = self.state
            for name, value in fields.items():
                setattr(self, name, value)
            return ServeEvent.record(self, kind, message, actor=actor, from_state=from_state, to_state=to_state, **payload)

    def update_if_unchanged(self, **fields) -> bool:
        """Write reconciler-owned fields only if state and generation are still as read here."""
        fields["updated_at"] = timezone.now()
        written = ServeModel.objects.filter(pk=self.pk, state=self.state, generation=self.generation).update(**fields)
        if written:
            for name, value in fields.items():
                setattr(self, name, value)
        return bool(written)

    def log(self, kind: str, message: str, *, actor=None, **payload) -> "ServeEvent":
        """An event that does not change the state (a pending GPU check, a Serve message)."""
        return ServeEvent.record(self, kind, message, actor=actor, **payload)


class AppendOnly(models.Model):
    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.get("force_insert"):
            raise ValueError(f"{type(self).__name__} rows are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError(f"{type(self).__name__} rows are append-only.")


class ServeEvent(AppendOnly):
    """Append-only history of a model. Copies the names it needs, so it outlives the model row."""

    model = models.ForeignKey(ServeModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    model_key = models.CharField(max_length=200, db_index=True)
    public_id = models.CharField(max_length=200, blank=True, help_text="The model's public id, copied.")
    owner_name = models.CharField(max_length=150, blank=True)
    kind = models.CharField(max_length=32, choices=EventKind.choices)
    message = models.TextField()
    from_state = models.CharField(max_length=16, blank=True)
    to_state = models.CharField(max_length=16, blank=True)
    generation = models.PositiveIntegerField(null=True, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_name = models.CharField(max_length=150, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["model", "-created_at", "-id"])]

    def __str__(self) -> str:
        return f"{self.model_key} {self.kind}: {self.message}"

    @classmethod
    def record(cls, model: ServeModel | None, kind: str, message: str, *, actor=None, model_key: str = "", **fields) -> "ServeEvent":
        return cls.objects.create(
            model=model,
            model_key=model.model_key if model else model_key,
            public_id=model.model_id if model else "",
            owner_name=model.owner.username if model else "",
            generation=model.generation if model else None,
            kind=kind,
            message=message,
            actor=actor if getattr(actor, "pk", None) else None,
            actor_name=getattr(actor, "username", "") or "",
            from_state=fields.pop("from_state", ""),
            to_state=fields.pop("to_state", ""),
            payload=fields,
        )


class ServeRevision(AppendOnly):
    """A config Gantry applied to Serve. Kept forever: Ray Serve itself keeps no history."""

    model = models.ForeignKey(ServeModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="revisions")
    model_key = models.CharField(max_length=200)
    number = models.PositiveIntegerField()
    generation = models.PositiveIntegerField()
    resolved_spec = models.JSONField()
    config = models.JSONField(help_text="The application config Serve was given.")
    config_hash = models.CharField(max_length=64)
    reason = models.CharField(max_length=200)
    actor_name = models.CharField(max_length=150, blank=True)
    applied_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["model_key", "number"], name="unique_revision_number")]

    def __str__(self) -> str:
        return f"{self.model_key} r{self.number}"


class Lease(models.Model):
    """A named lease a worker claims with one conditional UPDATE, so only one holds it at a time.

    Expires by itself, so a worker that dies holding it blocks the others for one TTL at most.
    """

    name = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=128, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    rerun_requested = models.BooleanField(default=False)
    # When the short follow-up reconcile (models mid-deploy) is due; one is scheduled at a time.
    followup_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} held by {self.holder or 'nobody'}"


# --- What Serve last said, for the web process ----------------------------------------------------
# Pages and the API never ask Ray themselves (a web worker must not be a Ray driver, and must not
# hang on a slow cluster): the reconciler writes what it read on every tick, with the time it read it.

class ClusterSnapshot(models.Model):
    """The cluster as the reconciler last read it (one row)."""

    ONE = "cluster"

    name = models.CharField(max_length=16, primary_key=True, default=ONE)
    read_at = models.DateTimeField(null=True, blank=True, help_text="When Serve last answered.")
    attempted_at = models.DateTimeField(null=True, blank=True, help_text="When the reconciler last asked.")
    error = models.TextField(blank=True, help_text="Why the last attempt got no answer; empty when it did.")
    resources = models.JSONField(default=dict, blank=True)
    engine = models.CharField(max_length=8, blank=True, help_text="The engine chosen from the cluster's resources.")
    reaped_at = models.DateTimeField(null=True, blank=True, help_text="When leaked shared memory was last looked for.")

    def __str__(self) -> str:
        return f"cluster as of {self.read_at}"

    @classmethod
    def current(cls) -> "ClusterSnapshot":
        return cls.objects.filter(name=cls.ONE).first() or cls()


class AppSnapshot(models.Model):
    """One Serve application as the reconciler last read it (AppStatus.as_dict())."""

    name = models.CharField(max_length=200, unique=True)
    status = models.JSONField()
    read_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name}: {self.status.get('status')} as of {self.read_at}"


class VramObservation(models.Model):
    """Estimate vs actual for one deploy on GPUs (serving/vram_observations.py records it): what the
    estimate said of each term beside what vLLM itself logged at start (its weights, the KV cache memory
    and tokens left), and NVML's reading of the replica's processes. NVML's figure is vLLM's share by
    design, so it checks the share, never the terms. One row per generation: the start counts."""

    model = models.ForeignKey(ServeModel, on_delete=models.CASCADE, related_name="vram_observations")
    generation = models.PositiveIntegerField()
    observed_at = models.DateTimeField(default=timezone.now)
    gpu_name = models.CharField(max_length=128, blank=True)
    gpu_total_bytes = models.BigIntegerField()
    estimated_bytes = models.BigIntegerField(help_text="Per GPU: vLLM's share, gpu_memory_utilization × total: what the replica holds by design.")
    need_bytes = models.BigIntegerField(help_text="Per GPU: weights + the engine's own memory + one max_model_len sequence of KV cache.")
    measured_bytes = models.BigIntegerField(help_text="The most that the replica's processes held on one of its GPUs (NVML).")
    terms = models.JSONField(default=dict, help_text="The estimate's terms per GPU: bytes, and kv_tokens.")
    logged = models.JSONField(default=dict, help_text="What vLLM logged at start (serving/vram_fit/vllm_log.py); {} when unread.")
    gpus = models.JSONField(default=list, help_text="Each GPU the replicas used: node, index, measured bytes.")

    SCORED = (("weights", "weights_bytes"), ("KV cache memory", "kv_available_bytes"), ("KV cache tokens", "kv_tokens"))

    class Meta:
        ordering = ["-observed_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["model", "generation"], name="one_vram_observation_per_generation")]

    def __str__(self) -> str:
        return f"{self.model_id} g{self.generation}: share {self.estimated_bytes}, measured {self.measured_bytes}"

    @property
    def scores(self) -> list[dict]:
        """Each term vLLM logged beside the estimate of it, and the error relative to the log
        (positive overestimates); terms the log did not give are left out."""
        from serving.vram_fit.estimation import gib

        rows = []
        for label, key in self.SCORED:
            estimated, logged = self.terms.get(key), self.logged.get(key)
            if estimated is None or not logged:
                continue
            figure = (lambda n: f"{n:,}") if key == "kv_tokens" else gib
            rows.append({"term": label, "estimated": figure(estimated), "logged": figure(logged),
                         "error_percent": round(100 * (estimated - logged) / logged, 1)})
        return rows

    @property
    def share_error_percent(self) -> float:
        """NVML's reading against the share: a check that vLLM took what it should, not of the estimate."""
        return round(100 * (self.estimated_bytes - self.measured_bytes) / self.measured_bytes, 1)

    @property
    def figures(self) -> dict[str, str]:
        from serving.vram_fit.estimation import gib

        return {name: gib(getattr(self, f"{name}_bytes")) for name in ("estimated", "need", "measured", "gpu_total")}


class PlaygroundCall(models.Model):
    """One answer streamed in a model's playground: what it measured, and what the per-user rate
    limit counts (rows, not a per-process cache, so every web process sees the same count)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    model = models.ForeignKey(ServeModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="playground_calls")
    model_key = models.CharField(max_length=200)
    prompt_chars = models.PositiveIntegerField()
    max_tokens = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    ttft_ms = models.FloatField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_s = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["user", "started_at"], name="serving_playground_user_recent")]


# --- Live engine metrics (serving/engine_metrics.py) ------------------------------------------------

class EngineMetricSample(models.Model):
    """One model's engine figures at one scrape of the Ray nodes' metrics endpoints: gauges as
    read, rates, quantiles and means over `window_s` before `at`. Kept for
    GANTRY_ENGINE_METRICS_KEEP_MINUTES; `engines` keeps each engine's cumulative series, which the
    next scrapes difference against."""

    model = models.ForeignKey(ServeModel, on_delete=models.CASCADE, related_name="engine_samples")
    model_key = models.CharField(max_length=200)
    at = models.DateTimeField(db_index=True)
    replicas = models.PositiveIntegerField(help_text="Engines that reported.")
    running = models.FloatField()
    waiting = models.FloatField()
    kv_cache = models.FloatField(null=True, blank=True, help_text="Mean KV-cache use of the replicas, 0..1.")
    window_s = models.FloatField(null=True, blank=True, help_text="What the rates and quantiles cover; empty without an earlier sample.")
    generation_tokens_per_s = models.FloatField(null=True, blank=True)
    decode_tokens_per_s = models.FloatField(null=True, blank=True, help_text="1 / mean inter-token latency.")
    preemptions = models.FloatField(null=True, blank=True)
    requests = models.FloatField(null=True, blank=True, help_text="First tokens produced in the window.")
    ttft_p50 = models.FloatField(null=True, blank=True)
    ttft_p95 = models.FloatField(null=True, blank=True)
    ttft_mean = models.FloatField(null=True, blank=True)
    itl_p50 = models.FloatField(null=True, blank=True)
    itl_p95 = models.FloatField(null=True, blank=True)
    itl_mean = models.FloatField(null=True, blank=True)
    endpoints = models.JSONField(default=list, help_text="The nodes read successfully in this scrape.")
    series = models.JSONField(default=list, help_text="Each engine's cumulative series (EngineReading.as_dict()).")

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["model", "-at"], name="serving_engine_sample_newest")]

    def __str__(self) -> str:
        return f"{self.model_key} at {self.at:%H:%M:%S}"

    def engines(self) -> list[EngineReading]:
        return [EngineReading.from_dict(self.model_key, data) for data in self.series]

    @classmethod
    def record(cls, model: ServeModel, readings: list, endpoints: set[str], at) -> "EngineMetricSample":
        """Store `model`'s figures from its engines' `readings`, the rates taken against the newest
        sample at least GANTRY_ENGINE_METRICS_WINDOW_S old (the oldest one when none is that old
        yet); no rates when the only earlier ones are from much longer ago (a scrape gap)."""
        from datetime import timedelta

        window = timedelta(seconds=settings.GANTRY_ENGINE_METRICS_WINDOW_S)
        earlier_rows = cls.objects.filter(model=model, at__lt=at)
        base = earlier_rows.filter(at__lte=at - window).order_by("-at", "-id").first() or earlier_rows.order_by("at", "id").first()
        if base is not None and at - base.at > 3 * window + timedelta(seconds=settings.GANTRY_ENGINE_METRICS_INTERVAL_S):
            base = None
        earlier = {e.key: e for e in base.engines()} if base else None
        found = figures(readings, earlier, set(base.endpoints) if base else set(), (at - base.at).total_seconds() if base else None)
        return cls.objects.create(
            model=model, model_key=model.model_key, at=at, endpoints=sorted(endpoints),
            series=[r.as_dict() for r in readings], **found.__dict__,
        )

    @classmethod
    def latest_per_model(cls, since) -> list["EngineMetricSample"]:
        from django.db.models.functions import RowNumber

        newest_first = models.Window(RowNumber(), partition_by=[models.F("model_id")], order_by=[models.F("at").desc(), models.F("id").desc()])
        return list(cls.objects.filter(at__gte=since).annotate(rank=newest_first).filter(rank=1).order_by("model_key"))


class EngineMetricsScrape(models.Model):
    """How the last scrape of the nodes' metrics endpoints went (one row): which nodes it read,
    which failed and why. A model without a fresh sample is explained from it."""

    ONE = "engine-metrics"

    name = models.CharField(max_length=16, primary_key=True, default=ONE)
    at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="Why the nodes could not be listed; empty when they were.")
    nodes = models.JSONField(default=list, help_text="Each node: endpoint, node_id, error, models.")

    def __str__(self) -> str:
        return f"engine metrics scraped at {self.at}"

    @classmethod
    def current(cls) -> "EngineMetricsScrape | None":
        return cls.objects.filter(name=cls.ONE).first()

    @classmethod
    def note(cls, at, *, error: str, nodes: list[dict]) -> None:
        cls.objects.update_or_create(name=cls.ONE, defaults={"at": at, "error": error, "nodes": nodes})
