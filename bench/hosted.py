"""Hosted judging benchmark: every judge kind against the strict OpenAI stand-in (rlaif/rehearsal/openai_server/),
with a chat model and a reasoning model: the share of verdicts parsed, the requests sent per prompt,
and what the server refused. No model is loaded; the stand-in answers every request that follows the
API's rules with a schema-valid document whose free text is a full sentence.

    python bench/hosted.py [--prompts 30] [--completions 4]

Run against another checkout (`PYTHONPATH=/path/to/other python bench/hosted.py`) to compare: a
stage the server refuses stops, and its row says so.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

KINDS = ["ultrafeedback", "critique", "mt_bench_single", "pairwise", "mt_bench_pairwise"]
SENTENCE = ("The response addresses the question directly, gives one concrete example, and stays accurate "
            "throughout, though it could say a little more about its limits.")


def talkative(body: dict) -> str:
    from rlaif.rehearsal.openai_server import default_responder

    def fill(x):
        return {k: fill(v) for k, v in x.items()} if isinstance(x, dict) else SENTENCE if x == "short answer" else x

    text = default_responder(body)
    try:
        return json.dumps(fill(json.loads(text)))
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=30)
    ap.add_argument("--completions", type=int, default=4)
    args = ap.parse_args()

    from rlaif.rehearsal.openai_server import OpenAIServer

    from rlaif.core.records import Completion
    from rlaif.core.store import Manifest, RunStore
    from rlaif.engines.openai_endpoint import Endpoint
    from rlaif.prompts.prompt_sets import load_prompts, write_prompt_chunks
    from rlaif.judges.spec import JudgeSpec
    from rlaif.judges.stage import manifest_counts, run_judge

    os.environ["BENCH_OPENAI_KEY"] = "sk-bench"
    prompts = load_prompts("mt_bench", limit=args.prompts)
    print(f"{args.prompts} MT-Bench prompts x {args.completions} completions; strict OpenAI stand-in on 127.0.0.1")
    print(f"{'model':12s} {'kind':18s} {'mode':15s} {'records':>7s} {'parsed':>7s} {'req/prompt':>10s} "
          f"{'refused':>7s} {'seconds':>7s}  note")
    for model in ("gpt-4o-mini", "o3-mini"):
        for kind in KINDS:
            for mode in (("per_completion", "joint") if kind == "ultrafeedback" else (None,)):
                with OpenAIServer(api_key="sk-bench", responder=talkative, reasoning_tokens=200) as srv:
                    store = RunStore(tempfile.mkdtemp(prefix="bench-hosted-"))
                    pm = write_prompt_chunks(prompts, store, 16)
                    shards = []
                    for chunk in pm.shards:
                        mine = {p.prompt_id for p in store.read("prompts", chunk.key, type(prompts[0]))}
                        comps = [Completion(completion_id=f"{p.prompt_id}-m{i}", prompt_id=p.prompt_id,
                                            prompt_hash=p.hash, model=f"m{i}", settings_hash="s",
                                            text=f"Answer {i} to: {p.text[:60]}")
                                 for p in prompts if p.prompt_id in mine for i in range(args.completions)]
                        shards.append(store.write("completions", f"c-{chunk.key}", comps, group=chunk.key))
                    cm = Manifest(stage="completions", shards=shards)
                    fields = dict(name=kind, kind=kind, model=model,
                                  endpoint={"base_url": srv.base_url, "api_key_env": "BENCH_OPENAI_KEY",
                                            "provider": "openai"})
                    if mode is not None:
                        if "mode" not in JudgeSpec.model_fields:  # an older checkout: no joint rating
                            continue
                        fields["mode"] = mode
                    if "provider" not in Endpoint.model_fields:  # an older checkout: no provider field
                        fields["endpoint"].pop("provider")
                    spec = JudgeSpec(**fields)
                    t, note = time.perf_counter(), ""
                    try:
                        counts = manifest_counts(run_judge(pm, cm, spec, store))
                    except Exception as e:  # the stage stopped: the server refused a request
                        counts, note = {"total": 0, "parsed": 0}, f"stopped: {str(e)[:110]}"
                    secs = time.perf_counter() - t
                    sent = srv.count("/chat/completions")
                    refused = srv.count("/chat/completions", 400) + srv.count("/chat/completions", 403)
                    parsed = counts["parsed"] / counts["total"] if counts["total"] else 0.0
                    print(f"{model:12s} {kind:18s} {mode or '-':15s} {counts['total']:7d} {parsed:7.1%} "
                          f"{sent / args.prompts:10.1f} {refused:7d} {secs:7.1f}  {note}", flush=True)


if __name__ == "__main__":
    main()
