"""Every judge kind, found in rlaif/judges/kinds/: a new kind is one module there (defining
`KINDS`) plus its template, and nothing else changes."""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from rlaif.judges import kinds as kinds_package
from rlaif.judges.base import JudgeKind


@lru_cache(maxsize=1)
def all_kinds() -> dict[str, JudgeKind]:
    found: dict[str, JudgeKind] = {}
    for m in sorted(pkgutil.iter_modules(kinds_package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{kinds_package.__name__}.{m.name}")
        for kind in getattr(module, "KINDS", []):
            found[kind.name] = kind
    return found


def get_kind(name: str) -> JudgeKind:
    kinds = all_kinds()
    if name not in kinds:
        raise ValueError(f"unknown judge kind {name!r} (kinds: {sorted(kinds)})")
    return kinds[name]
