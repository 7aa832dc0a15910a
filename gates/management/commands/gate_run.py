"""python manage.py gate_run --gate G --run-id MLFLOW_RUN --semver v0.3.1 --user ci-bot [--wait]

Starts a gate run as CI does (the gates worker and beat of `make run` or production carry it out).
With --wait it follows the run, printing each step as it ends, and exits as compare_baseline does:
0 promoted (PASS, or INCONCLUSIVE signed off meanwhile), 1 not promoted (FAIL, a failed step, a
rejection), 3 INCONCLUSIVE and waiting for a reviewer's sign-off, 2 a request the gate refused
(the field and why); 4 when --timeout passed first (the run goes on).
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from gates import gate_runs
from gates.compare import EXIT_INVALID
from gates.models import GateRun, GateRunState, StepStatus

EXIT_TIMEOUT = 4
EXITS = {GateRunState.PROMOTED: 0, GateRunState.FAILED: 1, GateRunState.AWAITING_SIGNOFF: 3}
MARKS = {StepStatus.OK: "✔", StepStatus.FAILED: "✖", StepStatus.INTERRUPTED: "↻", StepStatus.WAITING: "…"}


class Command(BaseCommand):
    help = "Start a gate run for an MLflow run (exit 0 promoted, 1 not promoted, 3 needs a sign-off, 2 refused, 4 timed out)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--gate", required=True, help="the baseline family, e.g. grammar-tutor")
        parser.add_argument("--run-id", required=True, help="the candidate's MLflow run id")
        parser.add_argument("--semver", required=True, help="the version to promote it as, e.g. v0.3.1")
        parser.add_argument("--registered-model", default="", help="the MLflow registered model (default: the gate's name)")
        parser.add_argument("--artifact-path", default="model", help="the model folder inside the run's artifacts")
        parser.add_argument("--user", required=True, help="who asks (CI's own Gantry user); a sign-off must come from someone else")
        parser.add_argument("--wait", action="store_true", help="follow the run until it ends or needs a sign-off")
        parser.add_argument("--timeout", type=float, default=3600.0, help="seconds --wait waits (default 3600)")
        parser.add_argument("--json", action="store_true", help="print the run as JSON at the end")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            self._exit(EXIT_INVALID, f"✖ --user: there is no Gantry user {options['user']!r}.")
        try:
            run = gate_runs.request(
                user, gate=options["gate"], mlflow_run_id=options["run_id"], semver=options["semver"],
                registered_model=options["registered_model"], artifact_path=options["artifact_path"],
            )
        except gate_runs.GateRunRefused as exc:
            self._exit(EXIT_INVALID, f"✖ --{(exc.field or 'request').replace('_', '-')}: {exc.message}")
        self.stdout.write(f"gate run {run.pk}: {run.registered_model} {run.semver} from MLflow run {run.mlflow_run_id} against {run.baseline.label}")
        if not options["wait"]:
            return
        run = self._follow(run.pk, options["timeout"])
        if options["json"]:
            self.stdout.write(json.dumps(gate_runs.run_json(run), indent=2))
        if not run.is_finished and run.state != GateRunState.AWAITING_SIGNOFF:
            self._exit(EXIT_TIMEOUT, f"… gate run {run.pk} is still {run.state} ({run.step}) after {options['timeout']:g} s; it goes on.")
        self._exit(EXITS[run.state], self._summary(run))

    def _follow(self, pk: int, timeout_s: float) -> GateRun:
        shown: set[tuple[int, str]] = set()
        deadline = time.monotonic() + timeout_s
        while True:
            run = GateRun.objects.select_related("baseline").get(pk=pk)
            for step in run.steps.all():
                if step.status != StepStatus.RUNNING and (step.pk, step.status) not in shown:
                    shown.add((step.pk, step.status))
                    self.stdout.write(f"{MARKS.get(step.status, ' ')} {step.name}: {step.detail}")
            if run.is_finished or run.state == GateRunState.AWAITING_SIGNOFF or time.monotonic() > deadline:
                return run
            time.sleep(1)

    @staticmethod
    def _summary(run: GateRun) -> str:
        if run.state == GateRunState.PROMOTED:
            return f"✔ PROMOTED {run.registered_model} version {run.promoted_version} ({run.semver}, @{run.promoted_alias})"
        if run.state == GateRunState.AWAITING_SIGNOFF:
            return f"? INCONCLUSIVE: a reviewer other than {run.requested_by_name} may sign it off at {run.get_absolute_url()}"
        return f"✖ NOT PROMOTED: {run.failed_step} failed: {run.error}"

    def _exit(self, code: int, message: str) -> None:
        (self.stdout if code == 0 else self.stderr).write(message)
        sys.exit(code)
