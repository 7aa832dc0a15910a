"""One object of every kind a URL names, owned by one user and made the way users make them: a
model deployed through the real reconciler (FakeServe at the edge), so it has a revision and the
preflight run its deploy stood on; an API token; a secret its spec requires; a baseline proposal
and a gate run against it."""
from __future__ import annotations

from dataclasses import dataclass

from dashboard.models import ApiToken
from gates import baselines, evalsets
from gates.models import Baseline, GateRun, PreflightRun, Secret
from gates.secrets import set_secret
from serving import deployments
from serving.models import ServeModel, ServeRevision
from serving.reconciler import reconcile
from tests.gates.test_baselines import URL, doc
from tests.gates.test_evalsets import jsonl, row
from tests.serving.factories import spec

SECRET_NAME = "HF_TOKEN"
# Distinctive enough that finding it anywhere can only mean it leaked.
SECRET_VALUE = "hf_canary_Zq7XvW3pLk9Tn2Rb8Yc4Md6Fs1Gh5Jx0"


@dataclass(frozen=True)
class Owned:
    model: ServeModel
    revision: ServeRevision
    run: PreflightRun
    token: ApiToken
    raw_token: str
    secret: Secret
    baseline: Baseline
    gate_run: GateRun

    def key(self, kind: str) -> object:
        """What a URL names this kind of object by."""
        return {
            "model": self.model.model_key,
            "revision": self.revision.number,
            "preflight run": self.run.pk,
            "secret": self.secret.name,
            "token": self.token.pk,
            "baseline": self.baseline.pk,
            "gate run": self.gate_run.pk,
        }[kind]

    def path(self, route) -> str:
        """The route naming these objects; placeholders where it names none of theirs."""
        return route.path({key: self.key(KIND[key]) for key in route.object_keys if key in KIND})

    def state(self) -> dict:
        """Everything about them a request could change, read fresh from the database."""
        model = ServeModel.objects.get(pk=self.model.pk)
        run = PreflightRun.objects.get(pk=self.run.pk)
        return {
            "model": (model.state, model.generation, model.num_replicas, model.resolved_spec),
            "revisions": list(ServeRevision.objects.filter(model=model).values_list("number", flat=True)),
            "runs": PreflightRun.objects.filter(owner=self.model.owner).count(),
            "run": (run.status, run.forced),
            "token": ApiToken.objects.get(pk=self.token.pk).revoked_at,
            "secret": list(Secret.objects.filter(owner=self.model.owner).values_list("name", "updated_at")),
            "baseline": Baseline.objects.get(pk=self.baseline.pk).status,
            "gate run": GateRun.objects.filter(pk=self.gate_run.pk).values_list("state", "signed_off_by_name").get(),
        }


# Which kind of object each URL kwarg names, by the plain path segment before it (Route.object_keys).
OWNED = {
    "serving/<model_key>": "model",
    "models/<model_key>": "model",
    "model/<model_key>": "model",
    "rollback/<number>": "revision",
    "preflight/<pk>": "preflight run",
    "secrets/<name>": "secret",
    "tokens/<pk>": "token",
}
SHARED = {"baselines/<pk>": "baseline", "runs/<pk>": "gate run"}
KIND = {**OWNED, **SHARED}
# Keys inside admin-only areas: refused before any lookup, so they need no object.
ADMIN_KEYS = {"zombies/<node_id>", "zombies/<pid>", "shm/<name>"}

# Keys no object has: the answer for them is what "not yours" must look like.
MISSING = {
    "model": "nobody-209901010000-nothing",
    "revision": 999,
    "preflight run": 999999,
    "secret": "NO_SUCH_SECRET",
    "token": 999999,
    "baseline": 999999,
    "gate run": 999999,
}


def make_owned(user, fake_serve) -> Owned:
    set_secret(user, SECRET_NAME, SECRET_VALUE, user)
    model, _ = deployments.submit_spec(user, spec("demo") + f"preflight:\n  secrets: [{SECRET_NAME}]\n")
    reconcile(fake_serve)  # preflight, then the apply
    reconcile(fake_serve)  # Serve says RUNNING
    token, raw = ApiToken.issue(user, "ci")
    baseline = baselines.propose("grammar-tutor", doc(), URL, user)
    eval_set, _ = evalsets.upload("grammar-tutor", jsonl(row()), user)
    # The row alone, as gates.gate_runs.request writes it: the run itself needs MLflow, not tested here.
    gate_run = GateRun.objects.create(
        gate="grammar-tutor", registered_model="grammar-tutor", mlflow_run_id="0" * 32, semver="v1.0.0",
        baseline=baseline, eval_set=eval_set, requested_by=user, requested_by_name=user.username, environment="dev",
    )
    return Owned(
        model=ServeModel.objects.get(pk=model.pk),
        revision=ServeRevision.objects.get(model=model, number=1),
        run=PreflightRun.objects.filter(model=model).latest("id"),
        token=token,
        raw_token=raw,
        secret=Secret.objects.get(owner=user, name=SECRET_NAME),
        baseline=baseline,
        gate_run=gate_run,
    )
