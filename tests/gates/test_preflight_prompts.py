"""The prompts guard on real prompt files, chat templates and prompt_vars.yaml."""
from __future__ import annotations

import json
import os
from pathlib import Path

from gates.preflight import prompts
from gates.preflight.base import FAIL, OK, NodeRuntime, PreflightConfig, PreflightContext, Runtime, SecretNames

# Shaped like the chat templates checkpoints ship (Llama 3.x, Qwen): namespace, loops, set, guards.
CHAT_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- set ns = namespace(system_message='', found=false) %}
{%- if messages[0]['role'] == 'system' %}
    {%- set first_system = messages[0]['content'] %}
{%- else %}
    {%- set first_system = '' %}
{%- endif %}
{{- first_system }}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {%- set ns.system_message = message['content'] | trim %}
    {%- elif message['role'] == 'assistant' %}
        {%- generation %}{{ '<|assistant|>' + message['content'] + eos_token }}{% endgeneration %}
    {%- else %}
        {{- '<|' + message['role'] + '|>' + message['content'] + eos_token }}
    {%- endif %}
    {%- if loop.index0 > 100 %}{{ raise_exception('too many messages') }}{% endif %}
{%- endfor %}
{%- for i in range(1) %}{{ ns.system_message }}{% endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>' }}
{%- endif %}
"""


def context(folder: Path, prompt_files: tuple[str, ...] = ()) -> PreflightContext:
    runtime = Runtime("local", (NodeRuntime("here", {}),))
    return PreflightContext(folder, PreflightConfig(prompt_files=prompt_files), runtime, SecretNames(lambda: set(), "none"))


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def failing(result) -> list:
    return [e for e in result.evidence if e.status == FAIL]


def test_an_undeclared_jinja_variable_fails_with_its_file_and_line(tmp_path):
    write(tmp_path, "prompts/greet.txt", "You are a helpful assistant.\n\nHello {{ user_name }}, welcome.\n")
    result = prompts.check(context(tmp_path))
    assert result.status == FAIL and not result.forceable
    [finding] = failing(result)
    assert (finding.item, finding.declared) == ("prompts/greet.txt:3", "{{ user_name }}")
    assert finding.effective == "no default in prompt_vars.yaml"
    assert "prompt_vars.yaml" in result.remedy


def test_a_default_in_prompt_vars_yaml_clears_it(tmp_path):
    write(tmp_path, "prompts/greet.txt", "Hello {{ user_name }}, welcome.\n")
    write(tmp_path, "prompt_vars.yaml", "other: x\n")
    assert prompts.check(context(tmp_path)).status == FAIL
    write(tmp_path, "prompt_vars.yaml", "user_name: ''\n")
    result = prompts.check(context(tmp_path))
    assert result.status == OK, result
    assert "1 prompt file" in result.summary


def test_a_default_filter_and_set_and_loop_variables_are_not_findings(tmp_path):
    write(tmp_path, "prompts/nested/a.j2", "{% set tone = 'kind' %}{{ tone }}\n{% for x in [1, 2] %}{{ x }}{% endfor %}\n{{ persona | default('a bot') }}\n")
    assert prompts.check(context(tmp_path)).status == OK
    write(tmp_path, "prompts/nested/b.j2", "{{ persona | default('a bot') }}\n{{ persona }}\n")
    [finding] = failing(prompts.check(context(tmp_path)))
    assert finding.item == "prompts/nested/b.j2:2"


def test_a_shell_variable_needs_a_default(tmp_path):
    write(tmp_path, "prompts/region.txt", "Answer for the ${REGION} region.\n")
    [finding] = failing(prompts.check(context(tmp_path)))
    assert (finding.item, finding.declared) == ("prompts/region.txt:1", "${REGION}")
    write(tmp_path, "prompts/region.txt", "Answer for the ${REGION:-eu} region. Costs $${PRICE}.\n")
    assert prompts.check(context(tmp_path)).status == OK


def test_a_real_looking_chat_template_yields_no_finding(tmp_path):
    write(tmp_path, "tokenizer_config.json", json.dumps({"bos_token": "<s>", "chat_template": CHAT_TEMPLATE}))
    result = prompts.check(context(tmp_path))
    assert result.status == OK, result
    # The same inputs are findings in a plain prompt: the chat inputs are only given to the chat template.
    write(tmp_path, "prompts/p.txt", "{{ bos_token }}{% for message in messages %}{{ message }}{% endfor %}")
    assert {e.declared for e in failing(prompts.check(context(tmp_path)))} == {"{{ bos_token }}", "{{ messages }}"}


def test_a_chat_template_variable_nobody_passes_fails(tmp_path):
    template = CHAT_TEMPLATE + "{{ system_persona }}\n"
    write(tmp_path, "tokenizer_config.json", json.dumps({"chat_template": [{"name": "default", "template": template}]}))
    [finding] = failing(prompts.check(context(tmp_path)))
    assert finding.item == f"tokenizer_config.json[chat_template:default]:{template.count(chr(10))}"
    assert finding.declared == "{{ system_persona }}"


def test_chat_template_jinja_at_the_root_is_linted(tmp_path):
    write(tmp_path, "chat_template.jinja", "{% for message in messages %}{{ message.content }}{{ suffix }}{% endfor %}")
    [finding] = failing(prompts.check(context(tmp_path)))
    assert finding.item == "chat_template.jinja:1"


def test_a_template_that_does_not_parse_fails_with_its_line(tmp_path):
    write(tmp_path, "prompts/broken.txt", "line one\n{% if user_name %}\nhello\n{% endfor %}\n")
    [finding] = failing(prompts.check(context(tmp_path)))
    assert finding.item == "prompts/broken.txt:4"
    assert "endfor" in finding.effective


def test_an_unknown_filter_fails_as_rendering_would(tmp_path):
    write(tmp_path, "prompts/p.txt", "ok\n{{ 'x' | shout }}\n")
    [finding] = failing(prompts.check(context(tmp_path)))
    assert finding.item == "prompts/p.txt:2" and "shout" in finding.effective


def test_a_prompt_file_outside_the_folder_fails(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    write(tmp_path, "secret.txt", "{{ nothing }}")
    os.symlink(tmp_path / "secret.txt", folder / "link.txt")
    result = prompts.check(context(folder, ("../secret.txt", "/etc/hostname", "link.txt", "missing.txt")))
    assert result.status == FAIL
    assert [(e.item, e.effective) for e in failing(result)] == [
        ("../secret.txt", "escapes the folder"),
        ("/etc/hostname", "escapes the folder"),
        ("link.txt", "escapes the folder"),
        ("missing.txt", "missing"),
    ]


def test_prompt_files_inside_the_folder_are_linted(tmp_path):
    write(tmp_path, "templates/system.txt", "Hi {{ who }}")
    [finding] = failing(prompts.check(context(tmp_path, ("templates/system.txt",))))
    assert finding.item == "templates/system.txt:1"


def test_binary_and_huge_files_are_skipped_with_a_note(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "logo.png").write_bytes(b"\x89PNG\r\n\x00\x00{{ x }}")
    (tmp_path / "prompts" / "big.txt").write_text("{{ x }}" + " " * prompts.MAX_BYTES)
    result = prompts.check(context(tmp_path))
    assert result.status == OK
    assert {(e.item, e.effective) for e in result.evidence} == {("prompts/logo.png", "skipped"), ("prompts/big.txt", "skipped")}


def test_a_malformed_prompt_vars_yaml_fails_naming_its_line(tmp_path):
    write(tmp_path, "prompts/greet.txt", "Hello\n")
    write(tmp_path, "prompt_vars.yaml", "user_name: ''\nregion: [eu\n")
    [finding] = failing(prompts.check(context(tmp_path)))
    assert finding.item.startswith("prompt_vars.yaml:")
    assert int(finding.item.split(":")[1]) >= 2


def test_no_prompts_at_all_is_ok(tmp_path):
    result = prompts.check(context(tmp_path))
    assert result.status == OK and result.summary == "No prompt files or chat template found."
