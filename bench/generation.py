"""Generation stage vs plain vLLM: output tokens per second on the same model, prompts and sampling.

    .venv/bin/python bench/generation.py [--model smollm2-135m-instruct] [--prompts 32] [--max-tokens 256] [--rounds 2]

One engine is loaded once and both sides use it, so the figure is what the stage adds around
vLLM (prompt rendering, record building, the shard write), not load time. Rounds alternate
plain/stage after a warm-up; the best round of each is reported. Goal: ratio >= 0.95.
Prints the device it ran on, so CPU and GPU figures are not mixed up.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from vllm import SamplingParams

    from rlaif.core.store import RunStore
    from rlaif.engines.base import Sampling
    from rlaif.engines.models import resolve_model
    from rlaif.engines.pool import EnginePool
    from rlaif.engines.vllm_offline import VLLMEngine, on_cpu
    from rlaif.generation.ensemble import GeneratorSpec
    from rlaif.generation.stage import generate
    from rlaif.prompts.prompt_sets import write_prompt_chunks
    from rlaif.prompts.prompt_sets import load_prompts

    prompts = load_prompts("mt_bench", limit=args.prompts)
    # ignore_eos-free sampling, same for both sides: temperature 0 makes both write the same tokens
    spec = GeneratorSpec(name="bench", model=args.model, sampling=Sampling(temperature=0.0, max_tokens=args.max_tokens))
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    messages = [[m.model_dump() for m in p.messages] for p in prompts]

    with VLLMEngine(resolve_model(args.model), spec.engine_spec().settings) as eng:
        eng.llm.chat(messages[:2], SamplingParams(max_tokens=8), use_tqdm=False)  # warm-up
        plain_best = stage_best = 0.0
        for r in range(args.rounds):
            t = time.perf_counter()
            outs = eng.llm.chat(messages, params, use_tqdm=False)
            dt = time.perf_counter() - t
            plain = sum(len(o.outputs[0].token_ids) for o in outs) / dt
            with tempfile.TemporaryDirectory() as tmp, EnginePool() as pool:
                pool.put(spec.engine_spec(), eng)
                store = RunStore(tmp)
                t = time.perf_counter()  # the whole stage: prompt chunks in, shards and metadata written
                manifest = generate(write_prompt_chunks(prompts, store, len(prompts)), [spec], store, pool)
                dt = time.perf_counter() - t
            stage = manifest.counts()["output_tokens"] / dt
            print(f"round {r + 1}: plain vLLM {plain:7.1f} tok/s   stage {stage:7.1f} tok/s")
            plain_best, stage_best = max(plain_best, plain), max(stage_best, stage)

    device = "cpu" if on_cpu() else "gpu"
    print(f"\nmodel={args.model} prompts={len(prompts)} max_tokens={args.max_tokens} device={device} "
          f"cores={len(os.sched_getaffinity(0))}")
    print(f"plain vllm.LLM: {plain_best:.1f} output tok/s")
    print(f"generation stage: {stage_best:.1f} output tok/s")
    print(f"ratio stage/plain: {stage_best / plain_best:.3f}  (goal >= 0.95)")


if __name__ == "__main__":
    main()
