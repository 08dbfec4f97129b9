"""vLLM in this process, on this machine's accelerator: a model loaded once per run (the default
when a member or judge has no `endpoint:`)."""

from __future__ import annotations

from rlaif.engines.backend import Backend, Replica


class VLLM(Backend):
    name, local = "vllm", True

    def open(self, spec, run_dir, seed, replica: Replica):
        from rlaif.engines.models import resolve_model
        from rlaif.engines.vllm_offline import VLLMEngine

        settings = spec.settings
        if replica.ray and settings.gpus > 1:  # vLLM's own processes inside the Ray actor's GPUs
            settings = settings.model_copy(update={"extra": {"distributed_executor_backend": "mp", **settings.extra}})
        return VLLMEngine(resolve_model(spec.model), settings, seed=seed, label=spec.model)

    def where(self, spec):
        return "local"
