"""`python tests/support/trainer_probe.py OUT rlaif-args...`: the `rlaif` command as `python -m rlaif` runs it,
with a look around each time a trainer starts training (a transformers TrainerCallback added to
every trainer): the engines the run's pool holds, the vLLM engine processes alive under this one
(vLLM names them `VLLM::EngineCore` and `VLLM::Worker`), and how many models of the trainers
before it are still alive. One JSON line per trainer in OUT; the GPU hand-off test reads them.
"""

from __future__ import annotations

import json
import sys
import weakref
from pathlib import Path


def vllm_processes() -> list[str]:
    """The vLLM engine processes alive under this process (an ended one waiting to be reaped holds nothing)."""
    import psutil

    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name().startswith("VLLM::") and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p.name())
        except psutil.NoSuchProcess:
            pass
    return alive


def install(out: str) -> None:
    from transformers import Trainer, TrainerCallback

    from rlaif.runners.context import run_context

    models: list[weakref.ref] = []  # each trainer's model, in the order the trainers were built

    class Probe(TrainerCallback):
        def __init__(self, earlier: list[weakref.ref]):
            self.earlier = earlier

        def on_train_begin(self, args, state, control, **kwargs):
            look = {"engines": run_context().pool.held(), "vllm_processes": vllm_processes(),
                    "earlier_models_alive": sum(r() is not None for r in self.earlier)}
            with open(out, "a") as f:
                f.write(json.dumps(look) + "\n")

    real_init = Trainer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.add_callback(Probe(list(models)))
        models.append(weakref.ref(self.model))

    Trainer.__init__ = init


if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[2])  # the checkout, as `python -m rlaif` run there has it
    install(sys.argv[1])
    from rlaif.cli.main import main

    sys.exit(main(sys.argv[2:]))
