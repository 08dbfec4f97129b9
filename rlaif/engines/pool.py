"""One loaded engine per model for a whole run, shared by every member and judge that uses it.

Members and judges that name the same model with the same engine settings get the same engine:
two ensemble members with different sampling on one model (the common case: temperatures, system
prompts) load it once, and a judge on a generator's model judges while it is still loaded. Local
engines are big, so the pool keeps `local_capacity` of them (default 1) and closes the least
recently used one before loading another; the generation stage orders its work so that the model
the judge needs next is the last one it uses. Endpoint engines cost nothing to keep. Which engine a
spec gets is its backend's to say (engines/backend.py); a Batch API engine keeps its batch ids in the
run dir given to `get`.

    with EnginePool() as pool:
        engine = pool.get(EngineSpec("smollm2-135m-instruct", None, settings))
        results = engine.generate(requests)

Before something else takes the accelerator in the same process (a training stage, evaluate's HF
models), `free_accelerator(pool)` releases every engine and returns the memory (see there).
"""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from pathlib import Path

from rlaif.engines.backend import EngineSpec, Replica  # noqa: F401  (EngineSpec: imported from here too)
from rlaif.engines.base import Engine

log = logging.getLogger(__name__)


class EnginePool:
    def __init__(self, local_capacity: int = 1, seed: int = 0, replica: Replica = Replica()):
        self.local_capacity, self.seed, self.replica = local_capacity, seed, replica
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._local: set[str] = set()  # keys of engines that hold the accelerator (the backend says)
        self._borrowed: set[str] = set()  # put() by the caller: never closed here
        self.loads: dict[str, int] = {}  # key -> times loaded (a figure the tests and bench read)

    def get(self, spec: EngineSpec, run_dir: str | Path | None = None) -> Engine:
        """The engine for `spec`, loaded once by its backend; `run_dir` holds a Batch API engine's state."""
        if spec.key in self._engines:
            self._engines.move_to_end(spec.key)
            return self._engines[spec.key]
        backend = spec.backend
        if backend.local:
            local = [k for k in self._engines if k in self._local and k not in self._borrowed]
            while len(local) >= self.local_capacity:
                self.release(local.pop(0))
        engine = backend.open(spec, Path(run_dir) if run_dir is not None else None, self.seed, self.replica)
        if backend.local:
            self._local.add(spec.key)
        self.loads[spec.key] = self.loads.get(spec.key, 0) + 1
        self._engines[spec.key] = engine
        return engine

    def put(self, spec: EngineSpec, engine: Engine) -> None:
        """Use an engine loaded elsewhere for `spec` (the caller closes it)."""
        self._engines[spec.key] = engine
        self._borrowed.add(spec.key)
        if spec.local:
            self._local.add(spec.key)

    def is_loaded(self, spec: EngineSpec) -> bool:
        return spec.key in self._engines

    def held(self) -> list[str]:
        """The labels of the engines it holds now (borrowed ones included)."""
        return [e.label for e in self._engines.values()]

    def release(self, key: str) -> None:
        engine = self._engines.pop(key, None)
        self._local.discard(key)
        if key in self._borrowed:
            self._borrowed.discard(key)
        elif engine is not None:
            log.info("releasing %s", engine.label)
            engine.close()

    def close(self) -> None:
        for key in list(self._engines):
            self.release(key)

    def __enter__(self) -> EnginePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_accelerator(pool: EnginePool | None = None) -> None:
    """Hand the accelerator to what runs next in this process (a trainer, HF models): every engine of
    `pool` released (a vLLM engine closed, its engine processes ended; borrowed ones only let go),
    what only reference cycles kept alive collected (a finished trainer holds its model and optimizer
    in cycles), and CUDA's cached blocks given back, so the next user finds the memory free: a vLLM
    engine takes `gpu_memory_utilization` of the whole GPU and leaves a trainer the rest."""
    if pool is not None:
        held = pool.held()
        pool.close()
        if held:
            log.info("released %s for what runs next", ", ".join(held))
    gc.collect()
    try:
        import torch
    except ImportError:  # no torch, no CUDA memory to give back
        return
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
