"""Guard "secrets": every secret the spec names exists for the deploying user. Names only: the
guard is handed a SecretNames, which cannot give it a value.

A secret being provisioned (by a script, a colleague) may appear while a deploy waits, so a
missing name is asked for again every POLL_S seconds, up to secret_timeout in all; a name that
never appears is a fail naming it, and a present name that looks like it (OPEN_API_KEY for
OPENAI_API_KEY) is called out, since a misspelling is the usual cause.
"""
from __future__ import annotations

import difflib

from gates.preflight.base import FAIL, OK, Evidence, GuardResult, PreflightContext

GUARD, TITLE = "secrets", "required secrets"
POLL_S = 0.5
STORE_PAGE = "/gates/secrets/"
NEAR_MISSES = 3


def check(context: PreflightContext) -> GuardResult:
    required = tuple(dict.fromkeys(context.config.secrets))
    if not required:
        return GuardResult(GUARD, TITLE, OK, "No secrets required.")
    present, waited, appeared = _wait_for(context, required)
    missing = [name for name in required if name not in present]
    evidence = tuple(_evidence(name, present, appeared, waited, context, required) for name in required)
    where = context.secrets.where
    data = {"waited_s": round(waited, 1), "missing": missing}
    if not missing:
        late = ", ".join(f"{name} appeared after {_seconds(at)}" for name, at in appeared.items())
        return GuardResult(GUARD, TITLE, OK, f"All {len(required)} required secret(s) are set in {where}{f' ({late})' if late else ''}.", evidence, data=data)
    waiting = f" (waited {_seconds(waited)})" if _waits(context) else ""
    summary = f"{_listed(missing)} {'is' if len(missing) == 1 else 'are'} missing from {where}{waiting}."
    remedy = "; ".join(_remedy(name, _near_misses(name, present, required), where) for name in missing) + "."
    return GuardResult(GUARD, TITLE, FAIL, summary, evidence, remedy, data=data)


def _waits(context: PreflightContext) -> bool:
    return context.wait_for_secrets and context.config.secret_timeout > 0


def _wait_for(context: PreflightContext, required: tuple[str, ...]) -> tuple[set[str], float, dict[str, float]]:
    """(the names present at the end, seconds waited, {required name: seconds until it appeared}
    for those absent at the first look). The timeout bounds the whole wait, not each name's: a
    spec of five names waits once."""
    started = context.clock()
    present = set(context.secrets.names())
    appeared: dict[str, float] = {}
    if not _waits(context):
        return present, 0.0, appeared
    deadline = started + context.config.secret_timeout
    awaited = [name for name in required if name not in present]
    while any(name not in present for name in required):
        left = deadline - context.clock()
        if left <= 0:
            break
        context.sleep(min(POLL_S, left))
        present = set(context.secrets.names())
        at = context.clock() - started
        appeared.update((name, at) for name in awaited if name in present and name not in appeared)
    return present, max(0.0, context.clock() - started), appeared


def _evidence(
    name: str, present: set[str], appeared: dict[str, float], waited: float, context: PreflightContext, required: tuple[str, ...]
) -> Evidence:
    if name in present:
        note = f"appeared after {_seconds(appeared[name])}" if name in appeared else ""
        return Evidence(name, "required", "set", OK, note)
    effective = f"missing (waited {_seconds(waited)})" if _waits(context) else "missing"
    near = _near_misses(name, present, required)
    note = "did you mean: " + ", ".join(f"{other} is set" for other in near) if near else ""
    return Evidence(name, "required", effective, FAIL, note)


def _near_misses(name: str, present: set[str], required: tuple[str, ...]) -> list[str]:
    """Present names that look like `name`: the same letters ignoring _ and case, a small edit
    distance, or what difflib finds close. A name the spec itself requires is never suggested."""
    candidates = sorted(present - set(required))
    folded = _fold(name)
    limit = 1 if len(name) < 8 else 2
    scored = []
    for other in candidates:
        distance = _edit_distance(name.upper(), other.upper())
        if _fold(other) == folded:
            scored.append((0, distance, other))
        elif distance <= limit:
            scored.append((1, distance, other))
    close = difflib.get_close_matches(name, candidates, n=NEAR_MISSES, cutoff=0.8)
    scored += [(2, _edit_distance(name, other), other) for other in close if all(other != s[2] for s in scored)]
    return [other for _, _, other in sorted(scored)[:NEAR_MISSES]]


def _fold(name: str) -> str:
    return name.replace("_", "").upper()


def _edit_distance(a: str, b: str) -> int:
    # Levenshtein, two rows: names are at most 128 characters.
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _remedy(name: str, near: list[str], where: str) -> str:
    # The CLI without a user checks its own environment ("the environment", "this process's
    # environment"); everything else checks the user's store in Gantry.
    place = "in the environment" if where.endswith("environment") else f"on {STORE_PAGE}"
    hint = f" ({', '.join(near)} {'is' if len(near) == 1 else 'are'} set: a misspelling?)" if near else ""
    return f"Set {name} {place}{hint}"


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _seconds(seconds: float) -> str:
    # "90 s", "1 s", "2.5 s": a tenth of a second matters only for short waits.
    tenths = round(seconds, 1)
    return f"{tenths:.0f} s" if tenths >= 10 or tenths == int(tenths) else f"{tenths:.1f} s"
