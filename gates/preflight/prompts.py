"""Prompt Lint: every variable a prompt or the chat template uses must have a value to render with.

Scanned: each text file under the folder's `prompts/` (recursively), the spec's `prompt_files`
(inside the folder only), the chat template in `tokenizer_config.json` (a string, or a list of
`{name, template}`) and `chat_template.jinja`. Defaults come from `prompt_vars.yaml` (name -> value).

- `{{ var }}`: every file is parsed as Jinja with jinja2's own parser, never grepped, so loop
  variables and macro arguments are declared (jinja2.meta), and so is any name the template `{% set %}`s
  anywhere. A use inside `| default(...)` is not a finding, nor a name the template tests with
  `is defined` / `is undefined` (it has planned for its absence). Unknown filters fail, as rendering would.
  Jinja's globals (`range`, `namespace`, ...) are never findings; in a chat template neither are the
  inputs transformers gives it (CHAT_INPUTS).
- `${NAME}` anywhere in the text (it is not Jinja syntax). `${NAME:-x}`, `${NAME-x}`, `${NAME:=x}` and
  `${NAME=x}` carry a shell default and are not findings; `$${NAME}` is an escaped dollar (as in
  Compose files and string.Template) and is skipped.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator

import jinja2
import yaml
from jinja2 import meta, nodes
from jinja2.ext import Extension
from jinja2.parser import Parser

from gates.preflight.base import FAIL, OK, Evidence, GuardResult, PreflightContext

GUARD, TITLE = "prompts", "prompt variables"
MAX_BYTES = 1024 * 1024
VARS_FILE = "prompt_vars.yaml"
CHAT_INPUTS = frozenset({
    "messages", "add_generation_prompt", "bos_token", "eos_token", "pad_token", "unk_token", "tools",
    "documents", "custom_tools", "tools_in_user_message", "date_string", "strftime_now",
    "raise_exception", "enable_thinking", "builtin_tools",
})
_DOLLAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}\n]*)\}")
_SHELL_DEFAULT = re.compile(r":?[-=]")
REMEDY = "Give each a default in prompt_vars.yaml (`user_name: ''`), or pass it from your code and remove it from the template."


class _GenerationTag(Extension):
    """transformers' `{% generation %}…{% endgeneration %}` (assistant masks): parsed as a plain
    block so chat templates that use it lint instead of failing as syntax errors."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


# The same parser settings transformers renders chat templates with; nothing here is ever rendered.
_ENV = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", _GenerationTag])
JINJA_GLOBALS = frozenset(_ENV.globals)


def _uses(node: nodes.Node, defaulted: bool, guarded: set[str]) -> Iterator[tuple[str, int, bool]]:
    """(name, line, under a default filter) for each variable read; names tested `is defined` go to guarded."""
    if isinstance(node, nodes.Name) and node.ctx == "load":
        yield node.name, node.lineno, defaulted
    if isinstance(node, nodes.Test) and node.name in ("defined", "undefined") and isinstance(node.node, nodes.Name):
        guarded.add(node.node.name)
    filtered = node.node if isinstance(node, nodes.Filter) and node.name in ("default", "d") else None
    for child in node.iter_child_nodes():
        yield from _uses(child, defaulted or child is filtered, guarded)


def _lint(label: str, source: str, defaults: set[str], chat: bool) -> list[Evidence]:
    """Findings in one template's text; `label` is how the report names it (`prompts/a.txt`)."""
    found: list[Evidence] = []
    dollars: dict[str, tuple[str, list[int]]] = {}  # name -> (first spelling, lines)
    for match in _DOLLAR.finditer(source):
        name, rest = match.group(1), match.group(2)
        if name not in defaults and not _SHELL_DEFAULT.match(rest):
            dollars.setdefault(name, (match.group(0), []))[1].append(source.count("\n", 0, match.start()) + 1)
    for spelling, seen in dollars.values():
        found.append(Evidence(f"{label}:{seen[0]}", _cut(spelling), f"no default in {VARS_FILE}", FAIL, _also(seen)))
    try:
        tree = _ENV.parse(source)
        # jinja2.meta compiles the tree, which also refuses unknown filters and tests: so would rendering.
        undeclared = meta.find_undeclared_variables(tree)
    except jinja2.TemplateSyntaxError as exc:
        why = "does not compile" if isinstance(exc, jinja2.TemplateAssertionError) else "does not parse"
        return found + [Evidence(f"{label}:{exc.lineno}", "a Jinja template", _cut(exc.message or str(exc), 120), FAIL, why)]
    allowed = defaults | JINJA_GLOBALS | (CHAT_INPUTS if chat else set())
    # jinja2.meta counts a name `{% set %}` in an if's branches as maybe undeclared (its branch
    # tracking treats the absent elif as a branch that sets nothing), which would flag most real chat
    # templates; a name the template sets anywhere is its own, not an input someone must pass.
    assigned = {name.name for block in tree.find_all((nodes.Assign, nodes.AssignBlock))
                for name in ([block.target] if isinstance(block.target, nodes.Name) else block.target.find_all(nodes.Name))}
    guarded: set[str] = set()
    lines: dict[str, list[int]] = {}
    for name, line, defaulted in _uses(tree, False, guarded):
        if not defaulted:
            lines.setdefault(name, []).append(line)
    for name in sorted(undeclared - allowed - guarded - assigned):
        if name in lines:  # every use sits under `| default(...)` otherwise
            seen = sorted(lines[name])
            found.append(Evidence(f"{label}:{seen[0]}", f"{{{{ {_cut(name, 40)} }}}}", f"no default in {VARS_FILE}", FAIL, _also(seen)))
    return found


def _also(lines: list[int]) -> str:
    """The other lines a finding repeats on, so one variable is one line of the report."""
    rest = sorted(set(lines) - {lines[0]})
    return ("also line " + ", ".join(map(str, rest[:5])) + (" …" if len(rest) > 5 else "")) if rest else ""


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_text(path: Path, label: str) -> tuple[str | None, Evidence | None]:
    """The file's text, or None with a note on why it was skipped (binary, too big)."""
    if path.stat().st_size > MAX_BYTES:
        return None, Evidence(label, "", "skipped", OK, "over 1 MiB: not a prompt")
    data = path.read_bytes()
    try:
        if b"\0" in data[:8192]:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, Evidence(label, "", "skipped", OK, "binary, not UTF-8 text")


def _inside(folder: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(folder)


def _prompt_paths(folder: Path, configured: tuple[str, ...]) -> tuple[list[Path], list[Evidence]]:
    """The files to lint (prompts/ and prompt_files, each once) and the problems finding them."""
    problems: list[Evidence] = []
    roots: list[Path] = [folder / "prompts"] if (folder / "prompts").is_dir() else []
    for entry in configured:
        path = folder / entry
        if Path(entry).is_absolute() or not _inside(folder, path):
            problems.append(Evidence(_cut(entry), "a path inside the model folder", "escapes the folder", FAIL, "prompt_files"))
        elif not path.exists():
            problems.append(Evidence(_cut(entry), "a prompt file", "missing", FAIL, "prompt_files"))
        else:
            roots.append(path)
    files: list[Path] = []
    for root in roots:
        if root.is_file():
            files.append(root)
            continue
        for base, dirs, names in os.walk(root):  # symlinked folders are not followed: they may point anywhere
            dirs.sort()
            files.extend(Path(base) / name for name in sorted(names))
    unique: dict[Path, Path] = {}  # resolved -> as found, so a file named twice is linted once
    for path in files:
        if not _inside(folder, path):
            problems.append(Evidence(_cut(str(path.relative_to(folder))), "a file inside the model folder", "a link out of the folder", FAIL))
        elif path.is_file():
            unique.setdefault(path.resolve(), path)
    return list(unique.values()), problems


def _chat_templates(folder: Path) -> tuple[list[tuple[str, str]], list[Evidence]]:
    """(label, source) of each chat template, and why one could not be read."""
    templates: list[tuple[str, str]] = []
    problems: list[Evidence] = []
    config = folder / "tokenizer_config.json"
    value = None
    if config.is_file():
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            line = getattr(exc, "lineno", None)
            item = f"{config.name}:{line}" if line else config.name
            problems.append(Evidence(item, "a JSON object", _cut(str(exc), 120), FAIL, "cannot read its chat_template"))
        if isinstance(value, str):
            templates.append((f"{config.name}[chat_template]", value))
        elif isinstance(value, list):
            for entry in value:
                if isinstance(entry, dict) and isinstance(entry.get("template"), str):
                    templates.append((f"{config.name}[chat_template:{_cut(str(entry.get('name', '?')), 30)}]", entry["template"]))
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        templates.append((jinja_file.name, jinja_file.read_text(encoding="utf-8", errors="replace")))
    return templates, problems


def _defaults(folder: Path) -> tuple[set[str], list[Evidence]]:
    path = folder / VARS_FILE
    if not path.is_file():
        return set(), []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        item = f"{VARS_FILE}:{mark.line + 1}" if mark else VARS_FILE
        return set(), [Evidence(item, "YAML mapping name -> default", _cut(str(getattr(exc, "problem", None) or exc), 120), FAIL, "does not parse")]
    if data is None:
        return set(), []
    if not isinstance(data, dict):
        return set(), [Evidence(VARS_FILE, "a mapping name -> default", f"a {type(data).__name__}", FAIL)]
    return {str(key) for key in data}, []


def check(context: PreflightContext) -> GuardResult:
    folder = context.folder.resolve()
    defaults, evidence = _defaults(folder)
    paths, problems = _prompt_paths(folder, context.config.prompt_files)
    templates, chat_problems = _chat_templates(folder)
    evidence += problems + chat_problems
    scanned = 0
    for path in paths:
        label = str(path.relative_to(folder))
        text, skipped = _read_text(path, label)
        if skipped:
            evidence.append(skipped)
            continue
        scanned += 1
        evidence += _lint(label, text or "", defaults, chat=False)
    for label, source in templates:
        scanned += 1
        evidence += _lint(label, source, defaults, chat=True)
    failing = [e for e in evidence if e.status == FAIL]
    if not failing:
        summary = f"{scanned} prompt file(s) and chat template(s) checked: every variable has a value." if scanned else "No prompt files or chat template found."
        return GuardResult(GUARD, TITLE, OK, summary, tuple(evidence))
    variables = [e for e in failing if e.effective == f"no default in {VARS_FILE}"]
    others = len(failing) - len(variables)
    parts = [f"{len(variables)} variable(s) without a default"] if variables else []
    parts += [f"{others} file problem(s)"] if others else []
    remedy = REMEDY if variables else ""
    if others:
        remedy += (" " if remedy else "") + f"Fix the files named above (keep prompt_files inside the model folder, make templates and {VARS_FILE} parse)."
    return GuardResult(GUARD, TITLE, FAIL, f"{' and '.join(parts)} in {scanned} scanned template(s).", tuple(evidence), remedy)
