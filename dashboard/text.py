"""Small pieces of the words Gantry's error messages share across apps."""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


def did_you_mean(key: Any, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' for a key a letter or two off one of `choices`, else ''."""
    close = difflib.get_close_matches(str(key), list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
