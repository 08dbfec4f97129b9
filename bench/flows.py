"""Prefect task caching: a first run, a rerun with nothing changed, a rerun with one judge setting changed.

    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/flows.py [--prompts 4] [--max-tokens 32]

A small recipe (MT-Bench prompts, two SmolLM2 generators, the UltraFeedback judge, no training)
runs three times into a fresh run directory. Prints each run's wall time, the rerun / first-run
ratio (goal: a small fraction), and which stages each run recomputed or took from the cache.
Prefect's ephemeral server is started by a warm-up flow first, so no run pays for it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()

    from prefect import flow

    from rlaif.flows.pipeline import pipeline_flow
    from rlaif.recipe.spec import Recipe

    smol = "smollm2-135m-instruct"
    recipe = Recipe.model_validate({
        "name": "bench-flows", "prompts": {"source": "mt_bench", "limit": args.prompts},
        "generators": [{"name": "smol-a", "model": smol, "sampling": {"temperature": 0.7, "max_tokens": args.max_tokens}},
                       {"name": "smol-b", "model": smol, "sampling": {"temperature": 1.0, "max_tokens": args.max_tokens, "seed": 1}}],
        "judge": {"name": "uf", "model": smol, "sampling": {"temperature": 0.0, "max_tokens": 96}},
        "binarize": {"test_fraction": 0}, "engine": {"max_model_len": 2048, "cpu_kv_cache_gb": 1},
    })
    changed = recipe.model_copy(update={"judges": [recipe.judges[0].model_copy(
        update={"sampling": recipe.judges[0].sampling.model_copy(update={"max_tokens": 80})})]})

    @flow(name="warm-up")
    def warm_up() -> None:  # starts Prefect's ephemeral server outside the timings
        pass

    warm_up()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, r in (("first run", recipe), ("rerun, unchanged", recipe), ("rerun, judge max_tokens 96->80", changed)):
            t = time.perf_counter()
            reports = pipeline_flow(r, str(Path(tmp) / "run"))  # as `rlaif run`: its own engines
            rows.append((label, time.perf_counter() - t, reports))

    print(f"\nprompts={args.prompts} generators=2 max_tokens={args.max_tokens} cores={len(os.sched_getaffinity(0))}")
    for label, secs, reports in rows:
        stages = ", ".join(f"{r.stage}={'cached' if r.cached else 'ran'}" for r in reports if r.stage != "prompts")
        print(f"{label:32s} {secs:7.2f} s   {stages}")
    first, rerun, changed_run = (s for _, s, _ in rows)
    print(f"rerun / first run: {rerun / first:.4f}   judge change / first run: {changed_run / first:.3f}")


if __name__ == "__main__":
    main()
