"""Scale on one CPU machine: Ray workers against canned OpenAI-compatible servers that stand in for GPUs.

    .venv/bin/python bench/scale.py                      # everything (about 10 minutes on 2 cores)
    .venv/bin/python bench/scale.py --only throughput    # or: memory (with the rerun)

Each stand-in "GPU" is a server on 127.0.0.1 (in a process of its own) that answers at a fixed rate:
`--concurrency` requests at a time, each after `--delay` seconds. Prints:

  throughput   generation with 1, 2, 4 and 8 Ray workers (one server each: worker i keeps server i
               busy, the others are its fallback), completions per second once every worker is up (startup shown
               apart), and the scaling efficiency: throughput(8) / (8 x throughput(1)); goal >= 0.9.
  memory       the whole pipeline (prompts, generate, judge, binarize) at 10k and 100k prompts, each
               in a fresh process that orchestrates a local Ray: its peak RSS (goal: <= 1.5x for 10x
               the prompts), and the pipeline's own CPU seconds per 1,000 completions (the
               orchestrating process plus the Ray workers; the servers are not the pipeline).
               The 10k run goes twice into one run directory: the unchanged rerun / the first run
               (goal <= 0.05), Prefect's server started before either is timed.

Prompts are synthetic and distinct; hygiene runs (exact duplicates, MT-Bench decontamination) but
near-duplicate embedding is off: it costs minutes of MiniLM at 100k on 2 cores, and its memory is
bounded by design (an id and a flag per prompt; tests/preferences/test_streaming.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the stand-in GPUs
def judge_reply(text: str) -> dict:
    rating = "5" if "answer of a" in text else "3"
    tokens = [{"token": t, "logprob": 0.0, "top_logprobs": [{"token": t, "logprob": 0.0}]}
              for t in ('{"', "rating", '":', rating, ',"', "rationale", '":"', "fine", '"}')]
    return {"content": '{"rating":%s,"rationale":"fine"}' % rating, "logprobs": {"content": tokens}}


async def serve(ports: list[int], concurrency: int, delay: float) -> None:
    """Minimal HTTP/1.1 (keep-alive) OpenAI chat server per port, `concurrency` answers at a time."""

    def handler(gate: asyncio.Semaphore):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    body = json.loads(await reader.readexactly(length)) if length else {}
                    if head.startswith(b"GET"):  # GET /v1/models: what the client's provider check asks
                        models = [{"id": m, "object": "model", "owned_by": "vllm"} for m in ("a", "b", "judge")]
                        data = json.dumps({"object": "list", "data": models}).encode()
                        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                     + str(len(data)).encode() + b"\r\n\r\n" + data)
                        await writer.drain()
                        continue
                    async with gate:
                        await asyncio.sleep(delay)
                    text = body.get("messages", [{}])[-1].get("content", "")
                    if "response_format" in body:
                        reply = judge_reply(text)
                        message, logprobs = reply["content"], reply["logprobs"]
                    else:
                        message, logprobs = f"answer of {body.get('model')}: {text[:40]}", None
                    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": message}}
                    if logprobs:
                        choice["logprobs"] = logprobs
                    data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model"),
                                       "choices": [choice], "usage": {"prompt_tokens": 20, "completion_tokens": 12,
                                                                      "total_tokens": 32}}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(data)).encode() + b"\r\n\r\n" + data)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        return handle

    servers = [await asyncio.start_server(handler(asyncio.Semaphore(concurrency)), "127.0.0.1", p) for p in ports]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


class StandIns:
    """`n` stand-in GPUs in a process of their own; `.urls` are their base URLs."""

    def __init__(self, n: int, concurrency: int, delay: float):
        import socket

        ports = []
        for _ in range(n):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        self.urls = [f"http://127.0.0.1:{p}/v1" for p in ports]
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", ",".join(map(str, ports)),
                                      "--concurrency", str(concurrency), "--delay", str(delay)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def __enter__(self) -> StandIns:
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def prompts_file(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt_id": f"q{i}", "prompt": f"Question {i}: explain idea number {i} in two "
                                                              f"sentences, with an example about item {i * 7 % 1000}."})
                    + "\n")
    return path


def endpoint(urls: list[str], concurrency: int) -> dict:
    return {"base_url": urls[0], "base_urls": urls[1:], "max_retries": 2, "max_concurrency": concurrency}


# ----------------------------------------------------------------------------- throughput
def throughput(args) -> None:
    from rlaif.core.store import RunStore
    from rlaif.generation.ensemble import GeneratorSpec
    from rlaif.generation.stage import GenerateStage
    from rlaif.runners.ray import RayExecutor
    from rlaif.prompts.hygiene import HygieneSpec, prepare_prompts

    rate = args.concurrency / args.delay
    print(f"\n== throughput: each worker's stand-in GPU answers {args.concurrency} at a time after {args.delay} s "
          f"(at most {rate:.0f} completions/s)")
    print(f"{'workers':>8} {'prompts':>8} {'completions/s':>14} {'per worker':>11} {'vs ideal':>9} {'startup s':>10}")
    base = None
    for n in (1, 2, 4, 8):
        with tempfile.TemporaryDirectory() as tmp, StandIns(n, args.concurrency, args.delay) as gpus:
            store = RunStore(Path(tmp) / "run")
            source = prompts_file(Path(tmp) / "prompts.jsonl", args.per_worker * n)
            pm, _ = prepare_prompts(str(source), "train", None, HygieneSpec(near_dup_threshold=None), store, 16)
            member = GeneratorSpec(name="a", model="a", endpoint=endpoint(gpus.urls, args.concurrency),
                                   engine={"replicas": n})
            executor = RayExecutor("local")
            t = time.perf_counter()
            executor.run(GenerateStage(pm, [member]), store)
            s = executor.stats
            per_s = s.steady_rows / s.steady_s
            base = base or per_s
            print(f"{n:8d} {args.per_worker * n:8d} {per_s:14.1f} {per_s / n:11.1f} {per_s / (n * rate):9.2f} "
                  f"{time.perf_counter() - t - s.busy_s:10.1f}")
            if n == 8:
                print(f"scaling efficiency at 8 workers: {per_s / (8 * base):.2f} (goal >= 0.9)")
    import ray

    ray.shutdown()


# ----------------------------------------------------------------------------- the whole pipeline
def pipeline_run(args) -> None:
    """One process: warm Prefect, run the pipeline (twice with --rerun); print one JSON line."""
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="rlaif-bench-prefect-")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["RAY_ADDRESS"] = "local"
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")  # a busy machine takes > 20 s
    from prefect import flow

    from rlaif.runners.context import flow_run
    from rlaif.flows.pipeline import run_stages
    from rlaif.recipe.spec import Recipe

    @flow(name="warm-up")
    def warm_up() -> None:
        pass

    @flow(name="bench-scale")
    def run(recipe, out):  # no annotations: `Recipe` is imported in this function, out of Prefect's sight
        with flow_run(recipe, out) as ctx:
            reports = run_stages(ctx, "binarize").reports
            return {"pairs": reports[-1].count_out, "completions": reports[1].count_out,
                    "worker_cpu_s": ctx.executor.stats.worker_cpu_s}

    warm_up()
    with tempfile.TemporaryDirectory() as tmp, StandIns(args.workers, args.concurrency, args.delay) as gpus:
        source = prompts_file(Path(tmp) / "prompts.jsonl", args.pipeline)
        ep = endpoint(gpus.urls, args.concurrency)
        engine = {"replicas": args.workers}
        recipe = Recipe.model_validate({
            "name": "bench-scale", "shard_size": 256, "prompts": {"source": str(source)},
            "hygiene": {"near_dup_threshold": None, "eval_prompts": "mt_bench"},
            "generators": [{"name": "a", "model": "a", "endpoint": ep, "engine": engine},
                           {"name": "b", "model": "b", "endpoint": ep, "engine": engine}],
            "judge": {"name": "uf", "model": "judge", "aspects": ["helpfulness"], "endpoint": ep, "engine": engine},
            "binarize": {"test_fraction": 0.01}})
        out = str(Path(tmp) / "run")
        times = []
        for _ in range(2 if args.rerun else 1):
            cpu0, t = os.times(), time.perf_counter()
            result = run(recipe, out)
            cpu1 = os.times()
            times.append(time.perf_counter() - t)
            if len(times) == 1:
                first = dict(result, driver_cpu_s=cpu1.user + cpu1.system - cpu0.user - cpu0.system,
                             peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({**first, "seconds": times}))


def in_fresh_process(args, prompts: int, rerun: bool, workers: int, concurrency: int, delay: float) -> dict:
    cmd = [sys.executable, __file__, "--pipeline", str(prompts), "--workers", str(workers),
           "--concurrency", str(concurrency), "--delay", str(delay)] + (["--rerun"] if rerun else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        sys.exit(f"pipeline run failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def memory(args) -> None:
    """The small size runs twice into one run directory: its second run is the unchanged rerun."""
    print(f"\n== memory, CPU and rerun: the whole pipeline (2 members and a judge, {args.fast_workers} workers "
          f"each, stand-ins answering {args.fast_concurrency} at a time after {args.fast_delay} s)")
    print(f"{'prompts':>8} {'completions':>12} {'pairs':>7} {'seconds':>8} {'peak RSS MB':>12} "
          f"{'CPU s / 1k completions':>23} {'(driver + workers)':>19}")
    rss, (small, large) = {}, args.sizes
    for n in args.sizes:
        r = in_fresh_process(args, n, n == small, args.fast_workers, args.fast_concurrency, args.fast_delay)
        cpu = r["driver_cpu_s"] + r["worker_cpu_s"]
        per_k = cpu / (r["completions"] / 1000)
        rss[n] = r["peak_rss_mb"]
        print(f"{n:8d} {r['completions']:12d} {r['pairs']:7d} {r['seconds'][0]:8.1f} {r['peak_rss_mb']:12.0f} "
              f"{per_k:23.2f} {r['driver_cpu_s'] / (r['completions'] / 1000):9.2f} + "
              f"{r['worker_cpu_s'] / (r['completions'] / 1000):.2f}", flush=True)
        if n == small:
            first, again = r["seconds"]
            print(f"unchanged rerun at {n} prompts: {again:.2f} s after {first:.1f} s: rerun / first = "
                  f"{again / first:.3f} (goal <= 0.05)", flush=True)
    print(f"peak RSS growth for {large / small:.0f}x the prompts: {rss[large] / rss[small]:.2f}x (goal <= 1.5x for 10x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["throughput", "memory"])
    ap.add_argument("--sizes", type=int, nargs=2, default=[10_000, 100_000], help="prompts of the memory runs")
    # 10 completions/s per stand-in: 8 of them stay within what 2 shared cores can drive (at 40/s each,
    # the machine's CPU, not the scheduling, sets the 8-worker figure)
    ap.add_argument("--concurrency", type=int, default=4, help="a stand-in GPU's requests at a time")
    ap.add_argument("--delay", type=float, default=0.4, help="seconds a stand-in takes per request")
    ap.add_argument("--per-worker", type=int, default=320, help="prompts per worker in the throughput runs")
    ap.add_argument("--fast-workers", type=int, default=2)
    ap.add_argument("--fast-concurrency", type=int, default=32)
    ap.add_argument("--fast-delay", type=float, default=0.0)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--pipeline", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rerun", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve([int(p) for p in args.serve.split(",")], args.concurrency, args.delay))
        return
    if args.pipeline:
        pipeline_run(args)
        return
    print(f"machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), CPU only; Ray on 127.0.0.1")
    for part in (throughput, memory):
        if args.only in (None, part.__name__):
            part(args)


if __name__ == "__main__":
    main()
