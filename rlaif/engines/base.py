"""The one interface every backend implements: requests in, texts + token log-probs + usage out.

    class Engine(Protocol):
        def generate(self, requests, progress=None) -> list[Result]: ...
        def close(self) -> None: ...

A `Request` is a chat (`messages`: the engine applies the model's chat template, or sends them to
/chat/completions) or raw text (`prompt`: URIAL and base models, /completions), with its sampling,
an optional output constraint (a JSON schema or a regex) and how many top log-probs to return per
token. A `Result` is the text, the finish reason, token counts, the log-probs as `TokenLogprobs`,
or the error that stopped it and whether it was transient (`retryable`: sent again next run).

Generation and judging build requests and read results; they never ask which backend runs them.
Backends: `vllm_offline.VLLMEngine` (vLLM in this process), `openai_endpoint.EndpointEngine` (any
OpenAI-compatible server; `providers.py` writes each request as its server takes it),
`balanced.BalancedEngine` (several servers of one model), `batch_api.BatchEngine` (the OpenAI Batch
API); each registers itself as a `backend.Backend` (engines/backends/), and a new one is one file.
`pool.EnginePool` loads each (model, settings) once per run. An engine may say how many requests it wants per call (`window`, see `window()`): the
stages then hand it several prompt chunks at once (a batch per window, not per chunk).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

# per generated token: (its text, [(candidate text, logprob), ...] of the top candidates)
TokenLogprobs = list[tuple[str, list[tuple[str, float]]]]
Progress = Callable[[int], None]  # called with the number of requests just finished


class Sampling(BaseModel):
    """How a member or a judge samples (a recipe's `sampling:` block)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    seed: int = 0


class EngineSettings(BaseModel):
    """An engine's settings: the recipe's `engine:` block, or a member's or judge's own, whose fields
    override the recipe's (`over`). None means 'pick for this machine'.

    The first group configures vLLM; the last says how a Ray cluster places the engine (`--ray`):
    each replica asks for tensor_parallel_size x pipeline_parallel_size GPUs (on a cluster that has
    GPUs), `num_cpus` CPUs and any custom `resources`, and `replicas` data-parallel copies take
    prompt chunks from one queue ("auto": as many as fit). Without Ray they are ignored.
    """

    model_config = ConfigDict(extra="forbid")

    backend: str | None = None  # which backend runs it (engines/backend.py); default: as `endpoint:` says
    dtype: str | None = None  # float32 on CPU, auto on GPU
    quantization: str | None = None  # vLLM's: awq, gptq, fp8, bitsandbytes, ...
    tensor_parallel_size: int = Field(1, ge=1)  # GPUs one replica shards each layer over
    pipeline_parallel_size: int = Field(1, ge=1)  # GPUs one replica splits the layers over
    enforce_eager: bool | None = None  # True on CPU
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)  # 0.2 on CPU (the KV cache is sized by the env var)
    max_model_len: int | None = Field(None, ge=1)
    cpu_kv_cache_gb: int = 4
    cpu_threads_bind: str | None = None  # default: every core this process may use
    extra: dict[str, Any] = Field(default_factory=dict)  # passed to vllm.LLM, but never `model`, `tokenizer`, ...
    trust_remote_code: bool = False  # run the Python code a model repo ships (vLLM's flag): an explicit opt-in
    # placement on a Ray cluster
    replicas: int | Literal["auto"] = 1
    num_cpus: float | None = Field(None, ge=0)  # per replica; default 1 for a local engine, 0.25 for an endpoint
    resources: dict[str, float] = Field(default_factory=dict)  # custom Ray resources per replica, e.g. {node2: 1}

    @field_validator("extra")
    @classmethod
    def _extra_adds_only(cls, extra: dict[str, Any]) -> dict[str, Any]:
        """`extra` adds vLLM arguments; it may not replace what the recipe names (the model the records
        are labelled with, the seed) nor run a model's own code behind the recipe's back."""
        refused = sorted(set(extra) & set(REFUSED_EXTRA))
        if "trust_remote_code" in refused:
            raise ValueError("'trust_remote_code' runs the Python code a model repo ships: set "
                             "engine.trust_remote_code: true instead, where a reader of the recipe sees it")
        if refused:
            raise ValueError(f"{refused} may not be set here: the recipe sets "
                             f"{' and '.join(REFUSED_EXTRA[k] for k in refused)}")
        return extra

    def over(self, default: EngineSettings | None) -> EngineSettings:
        """These settings where this block sets them, the recipe-wide `default` elsewhere."""
        if default is None:
            return self
        return default.model_copy(update={k: getattr(self, k) for k in self.model_fields_set})

    @property
    def gpus(self) -> int:
        """GPUs one replica needs (a tensor_parallel_size left in `extra` counts too)."""
        tp = self.extra.get("tensor_parallel_size", self.tensor_parallel_size)
        return int(tp) * int(self.extra.get("pipeline_parallel_size", self.pipeline_parallel_size))

    def engine_only(self) -> dict[str, Any]:
        """What makes two engines the same: everything but placement."""
        return self.model_dump(exclude=PLACEMENT)


PLACEMENT = {"replicas", "num_cpus", "resources"}
REFUSED_EXTRA = {"model": "the model (the member's or judge's `model:`)", "tokenizer": "the tokenizer (the model's own)",
                 "tokenizer_revision": "the tokenizer (the model's own)", "seed": "the seed (the recipe's `seed:`)",
                 "trust_remote_code": "trust_remote_code (engine.trust_remote_code)"}
# vLLM arguments that change how fast or where, not what a model writes: kept out of a member's or judge's
# settings hash (anything else in `extra`, such as a kv_cache_dtype or a revision, is in it)
NO_OUTPUT_EFFECT = {"tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "gpu_memory_utilization",
                    "max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching", "enable_chunked_prefill",
                    "enforce_eager", "swap_space", "cpu_offload_gb", "disable_log_stats", "distributed_executor_backend",
                    "block_size", "disable_custom_all_reduce", "download_dir", "kv_cache_memory_bytes"}


def output_settings(settings: EngineSettings) -> dict[str, Any]:
    """The engine settings that change what a local model writes: dtype, quantization, max_model_len
    (a longer prompt fails, an answer is cut at the context's end) and `extra` but for
    `NO_OUTPUT_EFFECT`. Only those that are set: empty for an engine block that sets none of them."""
    out: dict[str, Any] = {k: getattr(settings, k) for k in ("dtype", "quantization", "max_model_len")
                           if getattr(settings, k) is not None}
    extra = {k: settings.extra[k] for k in sorted(settings.extra) if k not in NO_OUTPUT_EFFECT}
    if extra:
        out["extra"] = extra
    return out


@dataclass(frozen=True)
class Constraint:
    """What the output must look like: a JSON schema (by name), a regex, or both (an engine that
    takes a regex uses it; one that does not is asked for the JSON form)."""

    name: str
    json_schema: dict | None = None
    regex: str | None = None


@dataclass(frozen=True)
class Request:
    key: str  # unique within one generate call (a batch API's custom id)
    sampling: Sampling
    seed: int
    messages: list[dict] | None = None
    prompt: str | None = None
    stop: tuple[str, ...] | None = None
    constraint: Constraint | None = None
    logprobs: int = 0  # top candidates per token; 0: none
    # who asks and for which row (the member or judge, the prompt id): what an error names; never sent
    who: str = ""
    row: str = ""


@dataclass
class Result:
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    tokens: TokenLogprobs | None = None
    error: str | None = None
    retryable: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # what answered, as the server or engine says: the model it names (a hosted alias answers as its
    # dated snapshot), the provider's system_fingerprint, or the local engine and its version
    served: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


class Engine(Protocol):
    label: str  # for progress and logs: the model and where it runs

    def generate(self, requests: Sequence[Request], progress: Progress | None = None) -> list[Result]: ...

    def close(self) -> None: ...


def window(engine: object) -> int:
    """How many requests `engine` wants per generate call (its optional `window`); 0: no preference,
    one prompt chunk per call."""
    return int(getattr(engine, "window", 0) or 0)
