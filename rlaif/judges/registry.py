"""Every judge kind: the built-in ones in rlaif/judges/kinds/ (imported here once) and any other
defined in this process. Defining a `JudgeKind` subclass with a `name` registers it, so a new kind
is one module plus its template, and nothing else changes."""

from __future__ import annotations

import importlib
import pkgutil

from rlaif.judges import kinds as kinds_package
from rlaif.judges.base import JudgeKind, defined

_instances: dict[type[JudgeKind], JudgeKind] = {}  # one instance per kind class (kinds hold no run state)


def all_kinds() -> dict[str, JudgeKind]:
    for m in pkgutil.iter_modules(kinds_package.__path__):
        importlib.import_module(f"{kinds_package.__name__}.{m.name}")  # a module imported before is not run again
    return {name: _instances.setdefault(cls, cls()) for name, cls in sorted(defined.items())}


def get_kind(name: str) -> JudgeKind:
    cls = defined.get(name)
    if cls is not None:
        return _instances.setdefault(cls, cls())
    kinds = all_kinds()
    if name not in kinds:
        raise ValueError(f"unknown judge kind {name!r} (kinds: {sorted(kinds)})")
    return kinds[name]
