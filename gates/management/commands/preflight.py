"""python manage.py preflight <spec.yaml | model folder> [--force] [--json] [--user NAME]

The four preflight guards from the command line — a CI step: ✔ / ⚠ / ✖ lines, exit 0 when the model
may deploy, 1 when it may not, 2 for input it cannot read. It runs with the operator's rights and
checks any folder it is given (the pages and the API check only folders their user may deploy).
A spec file gives the folder and its `preflight:` block; a folder takes its settings from a
`preflight.yaml` inside it or beside it (in its parent folder), else the installation's defaults.
Versions are compared with the Ray cluster's workers as a worker last read them, or, with no such
reading, with this machine's runtime — the report says which.
"""
from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path

import yaml
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from gates.preflight.base import FAIL, OK, WARN, GuardResult
from gates.preflight.config import PreflightConfigError, validate_block

MARKS = {OK: "✔", WARN: "⚠", FAIL: "✖"}
WORDS = {OK: "OK", WARN: "WARN", FAIL: "FAIL"}
LINE_WIDTH = 34


class Command(BaseCommand):
    help = "Run the preflight guards (version skew, CUDA probe, prompt lint, secrets) on a spec file or a model folder."

    def add_arguments(self, parser):
        parser.add_argument("target", help="a serving spec (YAML) or a model folder")
        parser.add_argument("--force", action="store_true", help="pass a version skew anyway (recorded); other failures still fail")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument("--user", help="check this Gantry user's secrets (default: this process's environment variables)")
        parser.add_argument("--no-wait", action="store_true", help="check secrets once instead of waiting up to secret_timeout")

    def handle(self, *args, **options):
        from gates import preflights
        from gates.models import PreflightRun

        self.engine = self._engine()
        owner = self._user(options["user"])
        resolved = self._resolved_spec(Path(options["target"]), owner)
        run = PreflightRun(
            trigger=PreflightRun.Trigger.CLI, folder=resolved["model_source"], resolved_spec=resolved, owner=owner,
            owner_name=getattr(owner, "username", ""),
        )
        runtime = self._runtime()
        run = preflights.execute_unsaved(run, runtime, wait_for_secrets=not options["no_wait"], engine=self.engine)
        forced = options["force"] and run.can_be_forced
        if forced:
            run.forced_by_name, run.force_reason = getpass.getuser(), "--force on the command line"
        self._record(run, forced)
        if options["json"]:
            self.stdout.write(json.dumps({**preflights.report_json(run, saved=run.pk is not None), "passed": run.passed or forced, "can_be_forced": run.can_be_forced and not forced}, indent=2))
        else:
            self._print(run, forced)
        if not (run.passed or forced):
            sys.exit(1)

    # --- input ------------------------------------------------------------------------------------

    def _user(self, username):
        if not username:
            return None
        from django.contrib.auth import get_user_model

        try:
            return get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"No Gantry user {username!r}.", returncode=2) from None
        except DatabaseError as exc:
            raise CommandError(f"--user needs Gantry's database, which cannot be read: {exc}", returncode=2) from None

    def _engine(self) -> str:
        from serving.engine import _nvidia_gpu_present, current_engine

        try:
            return current_engine()
        except DatabaseError:  # no Gantry database (a CI step): what this machine has
            return "gpu" if _nvidia_gpu_present() else "cpu"

    def _resolved_spec(self, target: Path, owner) -> dict:
        from serving.spec.errors import SpecError
        from serving.spec.parsing import parse_spec_yaml
        from serving.spec.validation import validate_spec

        if target.is_dir():
            return {"model_source": str(target.resolve()), "gpus_per_replica": 0 if self.engine == "cpu" else 1, "preflight": self._folder_block(target)}
        if not target.is_file():
            raise CommandError(f"{target} is neither a spec file nor a model folder.", returncode=2)
        try:
            spec = validate_spec(parse_spec_yaml(target.read_text(encoding="utf-8")), engine=self.engine)
        except SpecError as exc:
            field = f" ({exc.field})" if exc.field else ""
            raise CommandError(f"{target}{field}: {exc.message}", returncode=2) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"{target} cannot be read: {exc}", returncode=2) from None
        folder = self._expand(spec.model_source, owner)
        if not folder.is_dir():
            raise CommandError(f"model_source {spec.model_source} is not a folder here ({folder}).", returncode=2)
        return {"model_source": str(folder.resolve()), "gpus_per_replica": spec.gpus_per_replica, "preflight": spec.preflight}

    def _expand(self, source: str, owner) -> Path:
        """$HOME macros as the serving spec has them, without the path jail: the operator's rights."""
        from serving.spec.paths import NoUserRoot, Roots, split_home_macro

        roots = Roots.from_settings()
        try:
            base, rest = split_home_macro(source, roots=roots, user_root=roots.user_root(owner.username) if owner else None)
        except NoUserRoot:
            raise CommandError("model_source starts with $HOME: say whose with --user NAME.", returncode=2) from None
        return Path(base + rest).expanduser()

    def _folder_block(self, folder: Path) -> dict:
        for candidate in (folder / "preflight.yaml", folder.resolve().parent / "preflight.yaml"):
            if candidate.is_file():
                try:
                    data = yaml.safe_load(candidate.read_text(encoding="utf-8")) or {}
                    # Either the block itself or a spec-like file holding it under `preflight:`.
                    return validate_block(data.get("preflight", data) if isinstance(data, dict) else data)
                except yaml.YAMLError as exc:
                    raise CommandError(f"{candidate} is not valid YAML: {exc}", returncode=2) from None
                except PreflightConfigError as exc:
                    raise CommandError(f"{candidate}: {exc.message}", returncode=2) from None
        return {}

    def _runtime(self):
        from gates import preflights

        try:
            return preflights.cached_runtime()
        except DatabaseError:  # a CI step with no Gantry database: this machine is all there is
            return preflights.local_runtime_instead("Gantry's database cannot be read, so no cluster reading either")

    # --- output -----------------------------------------------------------------------------------

    def _record(self, run, forced: bool) -> None:
        """Kept in Gantry's history when its database is there (a CI step may have none)."""
        try:
            if forced:
                from django.utils import timezone

                run.forced_at = timezone.now()
            run.save()
        except DatabaseError:
            run.pk = None

    def _print(self, run, forced: bool) -> None:
        self.stdout.write(f"Preflight of {run.folder}")
        self.stdout.write(f"  compared with {run.runtime.get('source') == 'cluster' and 'the Ray cluster' or 'this machine'}"
                          + (f" ({run.runtime.get('note')})" if run.runtime.get("note") else ""))
        for result in run.guard_results:
            self.stdout.write(self._line(result))
            for e in result.evidence:
                if e.status != OK or result.status != OK:
                    note = f" — {e.note}" if e.note else ""
                    self.stdout.write(f"    • {e.item}: declared {e.declared or '—'}, in effect {e.effective or '—'}{note}")
            if result.remedy and result.status != OK:
                self.stdout.write(f"    → {result.remedy}")
        # A forced run also counts as passed (run.passed), so the force is said first.
        if forced:
            kept = f"recorded as preflight #{run.pk}" if run.pk else "not recorded: Gantry's database cannot be read"
            self.stdout.write(f"→ Version skew forced with --force by {run.forced_by_name}; {kept}.")
        elif run.passed:
            self.stdout.write("→ May deploy." + (" (with warnings)" if run.status == WARN else ""))
        elif run.can_be_forced:
            self.stdout.write("→ Aborting deploy (use --force to override)")
        else:
            self.stdout.write("→ Aborting deploy: fix the failures above (only a version skew can be forced).")

    def _line(self, result: GuardResult) -> str:
        label = f"{result.title} ".ljust(LINE_WIDTH, ".")
        return f"{MARKS[result.status]} {label} {WORDS[result.status]}: {result.summary}"
