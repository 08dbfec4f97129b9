"""Judging benchmark: judgements per second and parsed rate of each judge kind on the bundled models,
the judge stage's throughput against plain vLLM generating the same tokens, and UltraFeedback's
joint rating against its per-completion rating.

    python bench/judging.py [--prompts 16] [--judges smollm2-135m-instruct gemma3-270m] [--kinds ...]
                            [--modes-prompts 16] [--modes-completions 4]

For each judge model the engine is loaded once (load time is not counted), with prefix caching
off so that no run reuses another's prefill. Completions to judge
come from SmolLM2 (two per prompt, 64 tokens). For each kind it prints:
  judgements/s   records written per second by `rlaif.judges.stage.run_judge` (retries included)
  parsed         share of records parsed (goal: 99.5% or more with structured output)
  vs plain       stage tokens/s over plain `LLM.generate` of the very same requests and sampling
                 (guided decoding and log-probs included): the stage's own overhead (goal >= 0.9)
  vs free        stage tokens/s over plain unconstrained generation of the same number of tokens
                 (no guided decoding, no log-probs, ignore_eos): what the constraints cost

Joint vs per-completion UltraFeedback (`mode: joint` / `per_completion`), on the same completions
(`--modes-completions` SmolLM2 answers per prompt, sampled with different seeds), judged by each
judge model both ways: requests sent per prompt (counted at the engine: first tries, and with the
re-asks of outputs that did not parse), parsed
share, and how far the two agree (`rlaif agreement`'s measures: Spearman and Kendall of the scores,
chosen agreement, Cohen's kappa on the pairwise preferences), scored by `--score` (default auto).

    python bench/judging.py --sentinels 200 [--recipe recipes/zephyr-7b-beta/dpo.yaml] [--full 61135]

The sentinel overhead (judges/sentinels.py; no engine loads, nothing is sent): a recipe's judge with
`sentinels: N` over a prompt set of `--full` prompts (UltraFeedback's 61,135 by default: MT-Bench's
and the starter set's prompts, numbered, stand in for them offline). Printed from the dry-run's
estimate (recipe/dry_run.py, the requests the stages would build): the judge's requests and
input + output tokens for the run, those of one sentinel check, and the check's share of the run's
judging (goal: under 1%). A run that judges new prompts pays one check; a run with nothing new, none.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

KINDS = ["ultrafeedback", "critique", "mt_bench_single", "pairwise", "mt_bench_pairwise"]


def asks_for(spec, prompts, completions):
    """Every ask the judge stage makes on first try, in the stage's order."""
    by_prompt: dict[str, list] = {}
    for c in completions:
        by_prompt.setdefault(c.prompt_id, []).append(c)
    by_id = {p.prompt_id: p for p in prompts}
    return [a for pid, cs in by_prompt.items() for a in spec.impl.asks(spec, by_id[pid], cs)]


def plain(eng, spec, asks, seed: int, constrained: bool, lengths: list[int] | None = None):
    """Time plain LLM.generate over the same requests; returns (seconds, output token counts)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    from rlaif.core.records import derive_seed

    prompts, params = [], []
    for i, a in enumerate(asks):
        prompts.append(TokensPrompt(prompt_token_ids=list(eng.tokenizer(eng.chat_text(a.messages),
                                                                        add_special_tokens=False).input_ids)))
        if constrained:
            fmt = a.fmt
            c = StructuredOutputsParams(regex=fmt.regex) if fmt.regex else StructuredOutputsParams(json=fmt.schema())
            params.append(SamplingParams(temperature=spec.sampling.temperature, max_tokens=spec.sampling.max_tokens,
                                         seed=derive_seed(seed, a.key, 0), logprobs=spec.top_logprobs,
                                         structured_outputs=c))
        else:
            params.append(SamplingParams(temperature=0.0, max_tokens=max(1, lengths[i]), ignore_eos=True))
    t = time.perf_counter()
    outs = eng.llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - t, [len(o.outputs[0].token_ids) for o in outs]


class Counting:
    """An engine that counts the requests it is handed (first tries and re-asks alike)."""

    def __init__(self, engine):
        self.engine, self.label, self.calls = engine, engine.label, []

    def generate(self, requests, progress=None):
        self.calls.append(len(requests))  # one chunk here: the first call is every first try
        return self.engine.generate(requests, progress)

    def close(self):
        pass


def compare_modes(judge_model: str, prompts: int, per_prompt: int, score: str, tmp: Path) -> dict:
    """Joint and per-completion UltraFeedback on the same completions: requests per prompt, parsed
    share, agreement."""
    from rlaif.core.records import Judgement
    from rlaif.core.store import RunStore
    from rlaif.engines.base import EngineSettings, Sampling
    from rlaif.engines.models import resolve_model
    from rlaif.engines.pool import EnginePool
    from rlaif.engines.vllm_offline import VLLMEngine
    from rlaif.generation.ensemble import GeneratorSpec
    from rlaif.generation.stage import generate
    from rlaif.prompts.prompt_sets import load_prompts, write_prompt_chunks
    from rlaif.judges.agreement import agreement
    from rlaif.judges.spec import JudgeSpec
    from rlaif.judges.stage import manifest_counts, run_judge

    store = RunStore(tmp / f"modes-{judge_model}")
    ps = load_prompts("mt_bench", limit=prompts)
    pm = write_prompt_chunks(ps, store, len(ps))
    gens = [GeneratorSpec(name=f"smol-{i}", model="smollm2-135m-instruct",
                          sampling=Sampling(temperature=1.0, max_tokens=64, seed=i)) for i in range(per_prompt)]
    # vLLM's CPU backend fails a seeded re-ask (temperature > 0) caught in a chunked prefill
    # ("CPU Generator does not use offset"); joint prompts are long, so prefill whole prompts
    settings = EngineSettings(max_model_len=4096, extra={"enable_chunked_prefill": False,
                                                         "max_num_batched_tokens": 8192})
    out = {}
    with EnginePool() as pool:
        cm = generate(pm, gens, store, pool, settings)
        pool.close()
        with VLLMEngine(resolve_model(judge_model), settings) as eng:
            for mode in ("per_completion", "joint"):
                spec = JudgeSpec(name=f"uf-{mode}", model=judge_model, mode=mode, engine=settings)
                counting = Counting(eng)
                with EnginePool() as judges:
                    judges.put(spec.engine_spec(), counting)
                    t = time.perf_counter()
                    m = run_judge(pm, cm, spec, store, judges)
                    seconds = time.perf_counter() - t
                counts = manifest_counts(m)
                out[mode] = dict(first=counting.calls[0] / len(ps), requests_per_prompt=sum(counting.calls) / len(ps),
                                 parsed=counts["parsed"] / counts["total"], seconds=seconds,
                                 records=list(store.read_manifest(m, Judgement)))
    report = agreement(out["per_completion"]["records"], out["joint"]["records"], ("per_completion", "joint"), score)
    return {"modes": out, "agreement": report}


def sentinel_overhead(recipe_path: str, n: int, full: int, tmp: Path) -> None:
    """The judge's requests and tokens for the whole run, for one sentinel check, and the share."""
    import json

    from rlaif.prompts.prompt_sets import load_prompts
    from rlaif.recipe.dry_run import estimate
    from rlaif.recipe.spec import load_recipe

    pool = [p.text for src in ("mt_bench", "starter") for p in load_prompts(src)]
    source = tmp / "prompts.jsonl"
    with source.open("w") as f:
        for i in range(full):
            f.write(json.dumps({"prompt_id": f"p{i}", "prompt": f"{pool[i % len(pool)]} (request {i})"}) + "\n")
    base = load_recipe(recipe_path)
    judge = base.judge_spec().name
    index = [j.name for j in base.judges].index(judge)
    recipe = load_recipe(recipe_path, [f"prompts.source={source}", "prompts.limit=null",
                                       f"judges.{index}.sentinels={n}"])
    t = time.perf_counter()
    rows = {e.stage: e for e in estimate(recipe) if e.name == judge}
    run, check = rows["judge"], rows["sentinels (each run)"]
    print(f"{recipe_path}: judge {judge} ({run.model}, kind {recipe.judge_spec().kind}, "
          f"{recipe.judge_spec().mode}), {full:,} prompts x {len(recipe.generators)} members, sentinels: {n} "
          f"(estimated in {time.perf_counter() - t:.0f} s)")
    print(f"{'':28s} {'requests':>10s} {'input tok':>13s} {'output tok':>13s}")
    for label, e in (("the run's judging", run), ("one sentinel check", check)):
        print(f"{label:28s} {e.requests:10,d} {e.input_tokens:13,d} {e.output_tokens:13,d}")
    share = lambda a, b: a / b if b else 0.0  # noqa: E731
    print(f"{'check / run':28s} {share(check.requests, run.requests):10.2%} "
          f"{share(check.input_tokens, run.input_tokens):13.2%} {share(check.output_tokens, run.output_tokens):13.2%}"
          f"   (goal: under 1%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--judges", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    ap.add_argument("--kinds", nargs="*", default=KINDS, help="kinds to time (none: only the modes comparison)")
    ap.add_argument("--modes-prompts", type=int, default=16, help="joint vs per-completion: prompts (0: skip)")
    ap.add_argument("--modes-completions", type=int, default=4, help="joint vs per-completion: answers per prompt")
    ap.add_argument("--score", default="auto", choices=["auto", "expected", "sampled"])
    ap.add_argument("--sentinels", type=int, help="print the overhead of N sentinels for --recipe and exit")
    ap.add_argument("--recipe", default="recipes/zephyr-7b-beta/dpo.yaml")
    ap.add_argument("--full", type=int, default=61_135, help="prompts in the run (UltraFeedback: 61,135)")
    args = ap.parse_args()
    if args.sentinels:
        sentinel_overhead(args.recipe, args.sentinels, args.full, Path(tempfile.mkdtemp(prefix="bench-sentinels-")))
        return

    from rlaif.core.records import Completion
    from rlaif.core.store import RunStore
    from rlaif.engines.base import EngineSettings, Sampling
    from rlaif.engines.models import resolve_model
    from rlaif.engines.pool import EnginePool
    from rlaif.engines.vllm_offline import VLLMEngine
    from rlaif.generation.ensemble import GeneratorSpec
    from rlaif.generation.stage import generate
    from rlaif.prompts.prompt_sets import load_prompts, write_prompt_chunks
    from rlaif.judges.spec import JudgeSpec
    from rlaif.judges.stage import JudgeStage, manifest_counts
    from rlaif.runners.local import LocalExecutor

    tmp = Path(tempfile.mkdtemp(prefix="bench-judging-"))
    prompts = load_prompts("mt_bench", limit=args.prompts)
    gens = [GeneratorSpec(name=n, model="smollm2-135m-instruct", sampling=Sampling(temperature=1.0, max_tokens=64, seed=s))
            for n, s in (("a", 1), ("b", 2))]
    gen_store = RunStore(tmp / "gen")
    pm = write_prompt_chunks(prompts, gen_store, len(prompts))
    cm = generate(pm, gens, gen_store)
    completions = list(gen_store.read_manifest(cm, Completion))
    rows = []
    for judge_model in args.judges:
        # no prefix caching: the stage and the plain runs send the same prompts, and whichever ran
        # second would skip their prefill
        settings = EngineSettings(extra={"enable_prefix_caching": False})
        with VLLMEngine(resolve_model(judge_model), settings) as eng:
            for kind in args.kinds:
                spec = JudgeSpec(name=kind, kind=kind, model=judge_model, engine=settings)
                asks = asks_for(spec, prompts, completions)
                plain(eng, spec, asks[:4], 0, constrained=True)  # compile this kind's grammar once for both
                with EnginePool() as pool:
                    pool.put(spec.engine_spec(), eng)
                    t = time.perf_counter()
                    folder = f"judgements/{judge_model}/{kind}"
                    m = LocalExecutor(pool).run(JudgeStage(cm, spec, folder=folder), gen_store)
                    stage_s = time.perf_counter() - t
                counts = manifest_counts(m)
                plain_s, lengths = plain(eng, spec, asks, 0, constrained=True)
                free_s, _ = plain(eng, spec, asks, 0, constrained=False, lengths=lengths)
                tokens = sum(lengths)
                n = max(counts["total"], 1)
                rows.append((judge_model, kind, n, n / stage_s, counts["parsed"] / n,
                             counts["retried"], tokens / stage_s, plain_s / stage_s, free_s / stage_s))
                print(f"{judge_model:22s} {kind:18s} {rows[-1][3]:6.2f} judgements/s  parsed {rows[-1][4]:.1%}  "
                      f"vs plain {rows[-1][7]:.2f}  vs free {rows[-1][8]:.2f}", flush=True)

    print(f"\n{args.prompts} MT-Bench prompts x 2 SmolLM2 completions; engine load not counted; "
          f"{os.cpu_count()} CPUs")
    print(f"{'judge model':22s} {'kind':18s} {'records':>7s} {'judg/s':>7s} {'parsed':>7s} {'retried':>7s} "
          f"{'tok/s':>7s} {'vs plain':>8s} {'vs free':>8s}")
    for m, k, n, rate, parsed, retried, toks, vp, vf in rows:
        print(f"{m:22s} {k:18s} {n:7d} {rate:7.2f} {parsed:7.1%} {retried:7d} {toks:7.1f} {vp:8.2f} {vf:8.2f}")

    if args.modes_prompts:
        print(f"\nUltraFeedback joint vs per-completion: {args.modes_prompts} MT-Bench prompts x "
              f"{args.modes_completions} SmolLM2 answers, 4 aspects, score {args.score}")
        print(f"{'judge model':22s} {'mode':15s} {'first tries':>11s} {'+ re-asks':>10s} {'parsed':>7s} {'seconds':>8s}"
              "   (requests per prompt)")
        for judge_model in args.judges:
            r = compare_modes(judge_model, args.modes_prompts, args.modes_completions, args.score, tmp)
            for mode, x in r["modes"].items():
                print(f"{judge_model:22s} {mode:15s} {x['first']:11.1f} {x['requests_per_prompt']:10.1f} "
                      f"{x['parsed']:7.1%} {x['seconds']:8.1f}")
            a = r["agreement"]
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            print(f"{judge_model:22s} agreement over {a.completions_scored_by_both} completions: spearman "
                  f"{fmt(a.spearman)}, kendall {fmt(a.kendall)}, chosen agreement {fmt(a.chosen_agreement)} "
                  f"({a.prompts_compared} prompts, {a.prompts_with_tied_best} with a tied best), kappa {fmt(a.cohen_kappa)}")


if __name__ == "__main__":
    main()
