"""`python manage.py compare_baseline`: the CI step, run as CI runs it — the real command in its own
process, on real files, with a database URL that leads nowhere (the command must not need one)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gates.test_compare import SEED_BASELINE, candidate_text

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(tmp_path):
    def run(candidate: str | None, *args: str, baseline: str = SEED_BASELINE) -> subprocess.CompletedProcess:
        files = []
        for name, text in (("eval_baseline.json", baseline), ("candidate_eval.json", candidate)):
            path = tmp_path / name
            if text is not None:
                path.write_text(text)
            files.append(str(path))
        # Nothing listens on port 9: any query would fail the command loudly.
        env = {**os.environ, "DATABASE_URL": "postgres://nobody@127.0.0.1:9/none", "GANTRY_VAR_DIR": str(tmp_path / "var")}
        return subprocess.run(
            [sys.executable, "manage.py", "compare_baseline", "--baseline", files[0], "--candidate", files[1], *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )

    return run


def test_an_equal_candidate_passes_with_exit_0_and_a_table(cli):
    done = cli(candidate_text())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.split()[:2] == ["bucket", "n"] for line in lines)
    row = next(line for line in lines if line.strip().startswith("verb.go"))
    assert row.split()[:6] == ["verb.go", "60", "74.00", "%", "74.00", "%"] and "PASS" in row and "2-prop z" in row
    assert "Verdict: PASS" in done.stdout and "result_sha256 " in done.stdout


def test_a_drop_of_exactly_the_tolerance_passes_from_the_files_text(cli):
    done = cli(candidate_text(tense__present_simple="0.79"))
    assert done.returncode == 0, done.stdout


def test_a_significant_regression_fails_with_exit_1(cli):
    done = cli(candidate_text(tense__past_participle="0.64"))
    assert done.returncode == 1
    assert "✖ tense.past_participle: 8 pp below the baseline" in done.stdout and "Verdict: FAIL" in done.stdout


def test_a_drop_too_small_to_tell_is_inconclusive_with_exit_3(cli):
    done = cli(candidate_text(verb__go="0.70"))
    assert done.returncode == 3
    assert "? verb.go: 4 pp below the baseline" in done.stdout and "Verdict: INCONCLUSIVE" in done.stdout
    assert "sign-off" in done.stdout


def test_the_tolerance_option_overrides_the_files(cli):
    assert cli(candidate_text(verb__go="0.70"), "--tolerance", "0.05").returncode == 0
    done = cli(candidate_text(tense__present_simple="0.79"), "--tolerance", "0.01")
    assert done.returncode == 3 and "from --tolerance" in done.stdout


def test_another_eval_set_fails_with_exit_1(cli):
    done = cli(candidate_text().replace("d41d8cd98f00b204e9800998ecf8427e", "0" * 32))
    assert done.returncode == 1 and "another eval set" in done.stdout


def test_json_prints_one_document_with_the_verdict_and_every_bucket(cli):
    done = cli(candidate_text(verb__go="0.70"), "--json")
    assert done.returncode == 3
    data = json.loads(done.stdout)
    assert (data["verdict"], data["exit_code"], len(data["buckets"])) == ("INCONCLUSIVE", 3, 10)
    go = next(b for b in data["buckets"] if b["bucket"] == "verb.go")
    assert go["outcome"] == "INCONCLUSIVE" and go["test"] == "two-proportion-z" and len(go["candidate_ci"]) == 2


def test_a_missing_bucket_fails(cli):
    text = candidate_text().replace(',\n    "verb.be":              {"accuracy": 0.69, "n":  60}', "")
    assert '"verb.be"' not in text
    done = cli(text)
    assert done.returncode == 1 and "verb.be: missing from the candidate" in done.stdout


@pytest.mark.parametrize("which, text, words", [
    ("baseline", SEED_BASELINE.replace('"n": 240}', '"n": 0}', 1), 'buckets["tense.present_simple"].n must be a positive'),
    ("baseline", SEED_BASELINE.replace('"tolerance_pp": 0.02', '"tolerance_pp": 2'), "tolerance_pp 2 is not in [0, 1)"),
    ("baseline", SEED_BASELINE.replace('"baseline_sha"', '"baseline_commit"'), "baseline_commit is not a key"),
    ("candidate", candidate_text().replace('"accuracy": 0.74', '"accuracy": 74'), 'buckets["verb.go"].accuracy 74 is not in [0, 1]'),
    ("candidate", candidate_text()[:-3], "is not valid JSON"),
    ("candidate", None, "cannot be read"),
], ids=["n-0", "tolerance-in-pp", "unknown-key", "accuracy-in-percent", "not-json", "no-file"])
def test_an_invalid_file_exits_2_naming_the_file_and_the_key(cli, which, text, words):
    done = cli(candidate_text(), baseline=text) if which == "baseline" else cli(text)
    assert done.returncode == 2, done.stdout
    named = "eval_baseline.json" if which == "baseline" else "candidate_eval.json"
    assert f"{named}: " in done.stderr or f"{named} " in done.stderr
    assert words in done.stderr and done.stdout == ""


@pytest.mark.parametrize("value", ["abc", "2", "-0.01"])
def test_an_invalid_tolerance_exits_2(cli, value):
    done = cli(candidate_text(), "--tolerance", value)
    assert done.returncode == 2 and "--tolerance" in done.stderr


def test_per_item_results_are_compared_by_mcnemar(cli):
    # verb.go 44/60 → 38/60, 6 items lost and none gained: significant paired, not from accuracies alone.
    def doc(right: range, accuracy: float, **extra: object) -> str:
        return json.dumps({"eval_set_dvc_hash": "h", **extra, "buckets": {"verb.go": {"accuracy": accuracy, "n": 60}},
                           "items": [{"id": i, "bucket": "verb.go", "correct": i in right} for i in range(60)]})

    done = cli(doc(range(6, 44), 0.64), baseline=doc(range(44), 0.74, baseline_sha="s", tolerance_pp=0.02))
    assert done.returncode == 1
    assert "McNemar" in next(line for line in done.stdout.splitlines() if line.strip().startswith("verb.go"))
    assert "6 lost / 0 gained" in done.stdout
