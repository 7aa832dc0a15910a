"""`python manage.py preflight`: the CI step. Real folders, the real command: in a subprocess (its
exit code and its lines, with a database it cannot use, as in CI) and through call_command where
the run it records in Gantry's database is what is checked."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from gates.models import PreflightRun
from gates.preflight.versions import tokenizer_digest

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = b'{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}}'
WRONG_SHA = "0badc0d"  # a 7-hex prefix no tokenizer above has


def write_model(folder: Path, *, sha: str | None = None, prompt: str = "Hello {{ name }}, ask away.\n", defaults: str = "name: friend\n") -> Path:
    """A model folder as users ship one: a tokenizer, a card naming its sha, a prompt and its defaults.
    `sha` None writes the right one; a string writes that instead (a skewed card)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_bytes(TOKENIZER)
    (folder / "prompts").mkdir(exist_ok=True)
    (folder / "prompts" / "greeting.txt").write_text(prompt)
    (folder / "prompt_vars.yaml").write_text(defaults)
    card = {"tokenizer_sha": sha if sha is not None else tokenizer_digest(folder)[0]}
    (folder / "model-card.json").write_text(json.dumps(card))
    return folder


def write_spec(path: Path, folder: Path, preflight: str = "") -> Path:
    path.write_text(f"model_id: demo\nmodel_source: {folder}\n" + (f"preflight:\n{preflight}" if preflight else ""))
    return path


@pytest.fixture
def cli(tmp_path):
    """The command in its own process, as a CI step runs it: its database is an empty SQLite file
    (no tables), so nothing is recorded and the runtime compared with is this machine's."""

    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        environment = {k: v for k, v in os.environ.items() if k != "GANTRY_TEST_TOKEN"}
        environment |= {"DATABASE_URL": f"sqlite:///{tmp_path / 'no-tables.sqlite3'}", "GANTRY_ENGINE": "cpu", **(env or {})}
        return subprocess.run(
            [sys.executable, "manage.py", "preflight", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
        )

    return run


@pytest.fixture
def command(settings):
    """The command in this process, against the test database: what it records can be read back."""
    settings.GANTRY_ENGINE = "cpu"

    def run(*args: str) -> tuple[int, str]:
        out = io.StringIO()
        try:
            call_command("preflight", *args, stdout=out)
        except SystemExit as exc:
            return int(exc.code), out.getvalue()
        return 0, out.getvalue()

    return run


# --- exit codes and lines, in a process of its own --------------------------------------------------

def test_it_passes_a_clean_folder_with_a_tick_per_guard(cli, tmp_path):
    result = cli(str(write_model(tmp_path / "clean")))
    assert result.returncode == 0, result.stdout + result.stderr
    ticks = [line for line in result.stdout.splitlines() if line.startswith("✔ ")]
    assert [line.split(" ..")[0] for line in ticks] == [
        "✔ checkpoint ↔ runtime", "✔ GPU driver ↔ CUDA build", "✔ VRAM fit", "✔ prompt variables", "✔ required secrets",
    ]
    assert "→ May deploy." in result.stdout
    assert "compared with this machine" in result.stdout  # no database, so no cluster reading either


def test_it_fails_a_skewed_card_and_says_force_can_override_it(cli, tmp_path):
    folder = write_model(tmp_path / "skewed", sha=WRONG_SHA)
    result = cli(str(folder))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "✖ checkpoint ↔ runtime" in result.stdout
    # The evidence: what the card declares beside what the folder has.
    assert f"tokenizer_sha: declared {WRONG_SHA}, in effect {tokenizer_digest(folder)[0]}" in result.stdout
    assert "→ Aborting deploy (use --force to override)" in result.stdout


def test_it_passes_a_forced_skew_without_a_database(cli, tmp_path):
    result = cli(str(write_model(tmp_path / "skewed", sha=WRONG_SHA)), "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "✖ checkpoint ↔ runtime" in result.stdout  # the finding is still shown
    assert "Version skew forced with --force by" in result.stdout
    assert "not recorded: Gantry's database cannot be read" in result.stdout


def test_json_is_one_parsable_report(cli, tmp_path):
    folder = write_model(tmp_path / "skewed", sha=WRONG_SHA)
    result = cli(str(folder), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["status"] == "fail" and report["passed"] is False and report["can_be_forced"] is True
    assert [g["guard"] for g in report["guards"]] == ["versions", "cuda", "vram", "prompts", "secrets"]
    [sha] = [e for e in report["guards"][0]["evidence"] if e["item"] == "tokenizer_sha"]
    assert (sha["declared"], sha["effective"], sha["status"]) == (WRONG_SHA, tokenizer_digest(folder)[0], "fail")
    assert report["id"] is None and report["url"] is None  # not recorded: no database
    assert report["runtime"]["source"] == "local"


def test_a_missing_path_is_exit_2(cli, tmp_path):
    result = cli(str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "is neither a spec file nor a model folder" in result.stderr


def test_an_unknown_preflight_key_in_a_spec_is_exit_2_naming_it(cli, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", write_model(tmp_path / "m"), "  ignore_version: [patch]\n")
    result = cli(str(spec))
    assert result.returncode == 2
    assert "preflight.ignore_version" in result.stderr and "Did you mean 'ignore_versions'?" in result.stderr


def test_a_required_secret_is_read_from_the_environment(cli, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", write_model(tmp_path / "m"), "  secrets: [GANTRY_TEST_TOKEN]\n")
    present = cli(str(spec), "--no-wait", env={"GANTRY_TEST_TOKEN": "t0ken-value"})
    assert present.returncode == 0, present.stdout + present.stderr
    assert "✔ required secrets" in present.stdout and "this process's environment" in present.stdout
    assert "t0ken-value" not in present.stdout  # names only, never a value

    absent = cli(str(spec), "--no-wait")
    assert absent.returncode == 1
    assert "✖ required secrets" in absent.stdout
    assert "GANTRY_TEST_TOKEN is missing from this process's environment" in absent.stdout
    assert "Set GANTRY_TEST_TOKEN in the environment" in absent.stdout


# --- what it records, in this process -----------------------------------------------------------------

def test_force_passes_a_skew_and_records_who_forced_it(command, tmp_path, db):
    folder = write_model(tmp_path / "skewed", sha=WRONG_SHA)
    code, out = command(str(folder), "--force")
    assert code == 0, out
    run = PreflightRun.objects.get()
    assert run.trigger == "cli" and run.status == "fail" and run.folder == str(folder.resolve())
    assert run.forced_at is not None and run.forced_by_name and run.force_reason == "--force on the command line"
    assert run.passed
    assert f"→ Version skew forced with --force by {run.forced_by_name}; recorded as preflight #{run.pk}." in out


def test_a_run_without_force_is_recorded_unforced(command, tmp_path, db):
    code, _ = command(str(write_model(tmp_path / "skewed", sha=WRONG_SHA)))
    assert code == 1
    run = PreflightRun.objects.get()
    assert run.status == "fail" and run.forced_at is None and not run.passed


def test_force_does_not_pass_an_unresolved_prompt_variable(command, tmp_path, db):
    folder = write_model(tmp_path / "m", sha=WRONG_SHA, prompt="Dear {{ customer }},\n", defaults="")
    code, out = command(str(folder), "--force")
    assert code == 1
    assert "✖ prompt variables" in out and "prompts/greeting.txt:1" in out
    assert "only a version skew can be forced" in out
    assert PreflightRun.objects.get().forced_at is None


def test_a_spec_file_gives_its_preflight_block(command, tmp_path, db):
    folder = write_model(tmp_path / "skewed", sha=WRONG_SHA)
    assert command(str(write_spec(tmp_path / "plain.yaml", folder)))[0] == 1
    code, out = command(str(write_spec(tmp_path / "spec.yaml", folder, "  ignore_versions: [tokenizer_sha]\n")))
    assert code == 0, out
    assert PreflightRun.objects.order_by("-id").first().config["ignore_versions"] == ["tokenizer_sha"]


def test_a_folder_takes_preflight_yaml_from_inside_it(command, tmp_path, db):
    folder = write_model(tmp_path / "skewed", sha=WRONG_SHA)
    assert command(str(folder))[0] == 1
    (folder / "preflight.yaml").write_text("ignore_versions: [tokenizer_sha]\n")
    assert command(str(folder))[0] == 0


def test_a_folder_takes_preflight_yaml_from_beside_it(command, tmp_path, db):
    folder = write_model(tmp_path / "models" / "skewed", sha=WRONG_SHA)
    # A spec-like file holding the block under `preflight:` is read too.
    (tmp_path / "models" / "preflight.yaml").write_text("preflight:\n  ignore_versions: [tokenizer_sha]\n")
    assert command(str(folder))[0] == 0


def test_a_bad_preflight_yaml_is_exit_2_naming_the_file(command, tmp_path, db):
    folder = write_model(tmp_path / "m")
    (folder / "preflight.yaml").write_text("secret_timeout: forever\n")
    with pytest.raises(CommandError) as refused:
        command(str(folder))
    assert refused.value.returncode == 2
    assert str(folder / "preflight.yaml") in str(refused.value) and "preflight.secret_timeout" in str(refused.value)
