"""Judging benchmark: judgements per second and parsed rate of each judge kind on the bundled models,
and the judge stage's throughput against plain vLLM generating the same tokens.

    python bench/judging.py [--prompts 16] [--judges smollm2-135m-instruct gemma3-270m] [--kinds ...]

For each judge model the engine is loaded once (load time is not counted), with prefix caching
off so that no run reuses another's prefill. Completions to judge
come from SmolLM2 (two per prompt, 64 tokens). For each kind it prints:
  judgements/s   records written per second by `judges.stage.run_judge` (retries included)
  parsed         share of records parsed (goal: 99.5% or more with structured output)
  vs plain       stage tokens/s over plain `LLM.generate` of the very same requests and sampling
                 (guided decoding and log-probs included): the stage's own overhead (goal >= 0.9)
  vs free        stage tokens/s over plain unconstrained generation of the same number of tokens
                 (no guided decoding, no log-probs, ignore_eos): what the constraints cost
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

KINDS = ["ultrafeedback", "critique", "mt_bench_single", "pairwise", "mt_bench_pairwise"]


def requests_for(spec, prompts, completions):
    from judges.kinds import pair_requests, pointwise_requests
    from judges.stage import all_pairs

    by_id = {p.prompt_id: p for p in prompts}
    if spec.pairwise:
        return [r for a, b in all_pairs(completions) for r in pair_requests(spec, by_id[a.prompt_id], a, b)]
    return [r for c in completions if c.ok for r in pointwise_requests(spec, by_id[c.prompt_id], c)]


def plain(eng, spec, reqs, constrained: bool, lengths: list[int] | None = None):
    """Time plain LLM.generate over the same requests; returns (seconds, output token counts)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from judges.kinds import output_format
    from judges.stage import _seed, chat_text

    fmt = output_format(spec)
    ids, params = [], []
    for i, r in enumerate(reqs):
        ids.append(list(eng.tokenizer(chat_text(eng.tokenizer, r.messages), add_special_tokens=False).input_ids))
        if constrained:
            c = StructuredOutputsParams(json=fmt.schema()) if fmt.json_model else StructuredOutputsParams(regex=fmt.regex)
            params.append(SamplingParams(temperature=spec.sampling.temperature, max_tokens=spec.sampling.max_tokens,
                                         seed=_seed(0, r.key, 0), logprobs=spec.top_logprobs, structured_outputs=c))
        else:
            params.append(SamplingParams(temperature=0.0, max_tokens=max(1, lengths[i]), ignore_eos=True))
    t = time.perf_counter()
    outs = eng.generate(ids, params, progress=False)
    return time.perf_counter() - t, [len(o.outputs[0].token_ids) for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--judges", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    ap.add_argument("--kinds", nargs="+", default=KINDS)
    args = ap.parse_args()

    from generation.engines import EngineSettings, VLLMEngine
    from generation.ensemble import GeneratorSpec, Sampling, generate
    from generation.models import resolve_model
    from generation.prompt_sets import load_prompts
    from generation.store import RunStore
    from judges.spec import JudgeSpec
    from judges.stage import judge_counts, run_judge

    tmp = Path(tempfile.mkdtemp(prefix="bench-judging-"))
    prompts = load_prompts("mt_bench", limit=args.prompts)
    gens = [GeneratorSpec(name=n, model="smollm2-135m-instruct", sampling=Sampling(temperature=1.0, max_tokens=64, seed=s))
            for n, s in (("a", 1), ("b", 2))]
    completions = generate(prompts, gens, RunStore(tmp / "gen"))
    rows = []
    for judge_model in args.judges:
        # no prefix caching: the stage and the plain runs send the same prompts, and whichever ran
        # second would skip their prefill
        settings = EngineSettings(extra={"enable_prefix_caching": False})
        with VLLMEngine(resolve_model(judge_model), settings, compact_json=True) as eng:
            for kind in args.kinds:
                spec = JudgeSpec(name=kind, kind=kind, model=judge_model)
                reqs = requests_for(spec, prompts, completions)
                plain(eng, spec, reqs[:4], constrained=True)  # compile this kind's grammar once for both
                t = time.perf_counter()
                records = run_judge(prompts, completions, spec, RunStore(tmp / judge_model / kind), llm=eng)
                stage_s = time.perf_counter() - t
                counts = judge_counts(records)
                plain_s, lengths = plain(eng, spec, reqs, constrained=True)
                free_s, _ = plain(eng, spec, reqs, constrained=False, lengths=lengths)
                tokens = sum(lengths)
                rows.append((judge_model, kind, len(records), len(records) / stage_s, counts["parsed"] / len(records),
                             counts["retried"], tokens / stage_s, plain_s / stage_s, free_s / stage_s))
                print(f"{judge_model:22s} {kind:18s} {rows[-1][3]:6.2f} judgements/s  parsed {rows[-1][4]:.1%}  "
                      f"vs plain {rows[-1][7]:.2f}  vs free {rows[-1][8]:.2f}", flush=True)

    print(f"\n{args.prompts} MT-Bench prompts x 2 SmolLM2 completions; engine load not counted; "
          f"{os.cpu_count()} CPUs")
    print(f"{'judge model':22s} {'kind':18s} {'records':>7s} {'judg/s':>7s} {'parsed':>7s} {'retried':>7s} "
          f"{'tok/s':>7s} {'vs plain':>8s} {'vs free':>8s}")
    for m, k, n, rate, parsed, retried, toks, vp, vf in rows:
        print(f"{m:22s} {k:18s} {n:7d} {rate:7.2f} {parsed:7.1%} {retried:7d} {toks:7.1f} {vp:8.2f} {vf:8.2f}")


if __name__ == "__main__":
    main()
