"""README's settings table lists every variable dashboard/settings.py reads, so it cannot drift again.

A new env_*() call in settings.py fails here until the README says what the variable does."""
from __future__ import annotations

import ast
import re

from tests.conftest import ROOT

SETTINGS = ROOT / "dashboard" / "settings.py"
README = ROOT / "README.md"


def variables_settings_read() -> set[str]:
    """The first argument of every env_str/env_int/env_bool/env_choice/env_list/env_secret call."""
    names = set()
    for node in ast.walk(ast.parse(SETTINGS.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("env_"):
            first = node.args[0] if node.args else None
            assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                f"line {node.lineno}: {node.func.id}() must name its variable as a string literal for this test to read"
            )
            names.add(first.value)
            if node.func.id == "env_secret":
                names.add(first.value + "_FILE")
    return names


def variables_in_readme_table() -> set[str]:
    section = README.read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def test_the_parser_finds_the_variables_it_should():
    read = variables_settings_read()
    assert {"GANTRY_ENV", "SECRET_KEY", "SECRET_KEY_FILE", "DATABASE_URL", "GANTRY_DEPLOY_TIMEOUT_S"} <= read
    assert {"GANTRY_ENV", "DATABASE_URL"} <= variables_in_readme_table()


def test_every_variable_settings_reads_is_in_the_readme_settings_table():
    missing = sorted(variables_settings_read() - variables_in_readme_table())
    assert not missing, f"README.md's settings table does not list: {', '.join(missing)}"


def test_every_variable_in_the_table_is_read_somewhere():
    # settings.py for the app, gunicorn.conf.py for where it listens, bin/ for what only `make run`
    # reads: a row nothing reads is a lie.
    readers = SETTINGS.read_text() + (ROOT / "gunicorn.conf.py").read_text()
    readers += "".join(p.read_text() for p in (ROOT / "bin").iterdir() if p.is_file())
    read = variables_settings_read()  # with the NAME_FILE twin of every env_secret(NAME)
    stale = sorted(name for name in variables_in_readme_table() if name not in readers and name not in read)
    assert not stale, f"README.md's settings table lists variables nothing reads: {', '.join(stale)}"
