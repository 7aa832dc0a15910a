"""Every URL pattern Gantry serves, read from the resolver itself, so a new page or endpoint is in
every walk the day it is added. Django's admin is left out: it has its own login, tested by Django."""
from __future__ import annotations

import re
from dataclasses import dataclass

from django.urls import URLPattern, URLResolver, get_resolver

_KWARG = re.compile(r"<(?:(?P<converter>\w+):)?(?P<name>\w+)>")


@dataclass(frozen=True)
class Route:
    name: str  # "serving:detail", "api_serve_model": what reverse() takes
    route: str  # "serving/<str:model_key>/scale", without the leading slash

    @property
    def is_api(self) -> bool:
        return self.route.startswith("api/")

    @property
    def object_keys(self) -> tuple[str, ...]:
        """Each URL kwarg named with the last plain segment before it: "tokens/<pk>", "serving/<model_key>",
        "rollback/<number>". The segment says which kind of object a `pk` or a `name` is."""
        keys, noun = [], ""
        for segment in self.route.split("/"):
            match = _KWARG.fullmatch(segment)
            if match:
                keys.append(f"{noun}/<{match.group('name')}>")
            elif segment:
                noun = segment
        return tuple(keys)

    def path(self, values: dict[str, object] | None = None) -> str:
        """The route with each kwarg filled from `values` (keyed as object_keys are), or a placeholder
        (1 for <int:…>, x otherwise) for those not given: enough to reach a view that refuses first."""
        values = values or {}
        keys = iter(self.object_keys)

        def fill(match: re.Match) -> str:
            key = next(keys)
            if key in values:
                return str(values[key])
            return "1" if match.group("converter") == "int" else "x"

        return "/" + _KWARG.sub(fill, self.route)


def _walk(patterns, prefix: str = "", namespace: str = ""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            if str(entry.pattern).startswith("admin/"):
                continue
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern), inner)
        elif isinstance(entry, URLPattern):
            yield Route(f"{namespace}{entry.name}", prefix + str(entry.pattern))


def all_routes() -> list[Route]:
    return sorted(set(_walk(get_resolver().url_patterns)), key=lambda r: r.route)
