"""What the pipeline knows of a backend, and which engine a member or judge needs (`EngineSpec`).

A backend is one class, in one file, that subclasses `Backend` and names itself: defining the class
registers it. The built-in ones live in `rlaif/engines/backends/` (found there by `all_backends`):

    vllm       vLLM in this process, on this machine's accelerator (engines/vllm_offline.py)
    openai     one OpenAI-compatible server: vLLM's, the OpenAI API, another (engines/openai_endpoint.py)
    balanced   several servers of one model (`endpoint.base_urls`, engines/balanced.py)
    batch      the OpenAI Batch API (`endpoint.batch: true`, engines/batch_api.py)

A recipe picks one with `backend:` in an `engine:` block; without it, the `endpoint:` block picks as
it always has (none: vllm; `batch: true`: batch; `base_urls`: balanced; else openai). Everything
the pool, the preflight, the dry run and the Ray scheduler would otherwise ask per backend is a
method or attribute here, so none of them names a backend:

    local            it holds the accelerator in this process: the pool keeps `local_capacity` of
                     them, Ray gives its replicas GPUs, the preflight checks its model files and
                     prompt lengths
    open(...)        the engine, for one replica (a Ray cluster runs several)
    checks(specs)    the preflight's checks of what it talks to (a server's key and models)
    where(spec)      where requests go, for the dry run's table
    cost(spec, ...)  the dry run's dollars, from the endpoint's prices
    auto_replicas    `replicas: auto` on a Ray cluster: a fixed count, or None to share the cluster
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rlaif.core.errors import ConfigError
from rlaif.core.records import content_hash
from rlaif.engines import backends as backends_package
from rlaif.engines.base import Engine, EngineSettings
from rlaif.engines.config import Endpoint

_registered: dict[str, type[Backend]] = {}


@dataclass(frozen=True)
class Replica:
    """Which copy of an engine a process opens: `index` of `count`, inside a Ray actor or not."""

    index: int = 0
    count: int = 1
    ray: bool = False


class Backend:
    """A way to run requests. Subclasses set `name` (registered on definition) and `open`."""

    name: ClassVar[str] = ""
    local: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            _registered[cls.name] = cls

    def open(self, spec: EngineSpec, run_dir: Path | None, seed: int, replica: Replica) -> Engine:
        """The engine for `spec`; `run_dir` holds state an engine keeps across runs (Batch API ids)."""
        raise NotImplementedError

    def checks(self, specs: list[EngineSpec]) -> list[Callable[[], None]]:
        """The preflight's checks for these specs (each raises ConfigError); none by default."""
        return []

    def where(self, spec: EngineSpec) -> str:
        return spec.endpoint.base_url if spec.endpoint is not None else self.name

    def cost(self, spec: EngineSpec, input_tokens: int, output_tokens: int) -> float | None:
        """Dollars for this many tokens, where the endpoint gives prices; None: unknown."""
        p = spec.endpoint.prices if spec.endpoint is not None else None
        if p is None:
            return None
        return (input_tokens * p.input + output_tokens * p.output) / 1e6

    def auto_replicas(self, spec: EngineSpec) -> int | None:
        """`replicas: auto` on a Ray cluster: None shares what the cluster has left (a local model)."""
        return None if self.local else 1


def all_backends() -> dict[str, type[Backend]]:
    """Every backend: the built-in ones (imported here once) and any other defined in this process."""
    for m in pkgutil.iter_modules(backends_package.__path__):
        importlib.import_module(f"{backends_package.__name__}.{m.name}")
    return dict(_registered)


def get_backend(name: str) -> Backend:
    backends = _registered if name in _registered else all_backends()
    if name not in backends:
        raise ConfigError(f"unknown backend {name!r} (backends: {sorted(backends)})")
    return backends[name]()


def known_backend(settings: EngineSettings | None) -> EngineSettings | None:
    """A pydantic validator's check of an `engine:` block's `backend:` (a recipe fails at load)."""
    if settings is not None and settings.backend is not None:
        try:
            get_backend(settings.backend)
        except ConfigError as e:
            raise ValueError(str(e)) from None
    return settings


def default_backend(endpoint: Endpoint | None) -> str:
    """The backend an `endpoint:` block means when no `backend:` is named."""
    if endpoint is None:
        return "vllm"
    if endpoint.batch:
        return "batch"
    return "balanced" if endpoint.base_urls else "openai"


@dataclass(frozen=True)
class EngineSpec:
    """Which engine a member or judge needs: a model, where it runs, with which settings."""

    model: str
    endpoint: Endpoint | None = None
    settings: EngineSettings = field(default_factory=EngineSettings)

    @property
    def backend_name(self) -> str:
        return self.settings.backend or default_backend(self.endpoint)

    @property
    def backend(self) -> Backend:
        return get_backend(self.backend_name)

    @property
    def key(self) -> str:
        named = (self.settings.backend,) if self.settings.backend else ()  # absent when unnamed: keys stand
        if self.endpoint is not None:  # never the key: where, which model, and how it is asked
            return "endpoint-" + content_hash(self.endpoint, self.model, *named)
        return "local-" + content_hash(self.model, self.settings.engine_only())

    @property
    def local(self) -> bool:
        """Holds the accelerator in this process (a model loaded here), as the backend says."""
        return self.backend.local
