"""End to end, as a user pays for it: `rlaif run` against a plain-vLLM script, each a whole process.

    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/end_to_end.py [--rounds 1]

The work (issue #16; distilabel's UltraFeedback example at small scale): 32 MT-Bench prompts, two
sampled answers each from SmolLM2-135M-Instruct (seeds 0 and 1, temperature 0.7, 256 tokens), then
a critique-and-score judgement (a critique, then an overall score 1-10, as JSON) of every answer
by the same model, greedy, 160 tokens. Each side runs in a subprocess from a cold start (a new
Python process: imports, model load, engine shutdown and exit all count):

  pipeline  `python -m rlaif run bench/end_to_end.yaml --out <tmp>/run` (the recipe is part of this
            bench: two members on one model, the critique judge on it, hygiene off since the plain
            script does none, no training). Prompts written as shards; both members on one loaded
            engine in one generate call; the judge on that same engine, its JSON schema enforced by
            guided decoding, the score token's log-probs kept, an output that does not parse asked
            again (up to 2 times); every record written as shards; a dataset version published
            (Arrow + Parquet splits, card, plots, manifest). A fresh PREFECT_HOME and no long-lived
            server (RLAIF_USE_SERVER=0): Prefect's temporary server starts inside the run, as on a
            new user's first run.
  plain     `python bench/end_to_end_plain.py` (read it): one `LLM` load, two `LLM.chat` calls (seed 0,
            then seed 1), one `LLM.chat` call judging the 64 answers under the same JSON schema,
            the results written to one JSONL file. No log-probs, no re-asks, nothing else. Both sides print
            the answers' output tokens: the two sample with different seeds, so their lengths differ a little.

Both get the same vLLM CPU environment: VLLM_CPU_KVCACHE_SPACE=4 (the recipe's default) and
VLLM_CPU_OMP_THREADS_BIND on every core this process may use (vLLM leaves one idle otherwise),
unless already set. After the first pipeline run the same command runs again unchanged.

Prints each side's wall time and what it spent it on, pipeline / plain (goal <= 1.05), the parsed
judgements (goal: all 64 for the pipeline), and the unchanged rerun's time and its ratio to the
pipeline's first run (goal <= 0.05). With --rounds N the sides alternate which goes first, and
the median ratio is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "bench" / "end_to_end.yaml"
PLAIN = ROOT / "bench" / "end_to_end_plain.py"
JUDGE = "critique-smollm2"


def environment(tmp: Path) -> dict[str, str]:
    cores = sorted(os.sched_getaffinity(0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp / "prefect-home"), "RLAIF_USE_SERVER": "0"}
    env.pop("PREFECT_API_URL", None)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))
    return env


def timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, str]:
    """Run `cmd`; returns its wall time and stdout (stderr goes to `log`). A failure stops the bench."""
    t = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    secs = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout[-2000:]}\n{log.read_text()[-3000:]}")
    return secs, proc.stdout


def pipeline(tmp: Path, env: dict[str, str], run: Path) -> tuple[float, dict]:
    secs, _ = timed([sys.executable, "-m", "rlaif", "run", str(RECIPE), "--out", str(run)], env, tmp / "pipeline.log")
    summary = {r["stage"]: r for r in json.loads((run / "summary.json").read_text())}
    report = json.loads((run / "judgements" / JUDGE / "report.json").read_text())
    return secs, {"stages": {k: round(r["seconds"], 1) for k, r in summary.items()}, "parsed": report["parsed"],
                  "judged": report["total"], "retried": report["retried"],
                  "output_tokens": summary["generate"]["notes"]["output_tokens"]}


def plain(tmp: Path, env: dict[str, str]) -> tuple[float, dict]:
    from rlaif.engines.models import resolve_model
    from rlaif.prompts import data_file

    cmd = [sys.executable, str(PLAIN), resolve_model("smollm2-135m-instruct"), str(data_file("sets/mt_bench.jsonl")),
           str(data_file("templates/ultrafeedback_critique.v1.jinja")), str(tmp / "plain.jsonl")]
    secs, out = timed(cmd, env, tmp / "plain.log")
    return secs, json.loads(next(line for line in out.splitlines() if line.startswith('{"load_s"')))  # vLLM logs to stdout too


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1, help="times to run both sides (alternating which goes first)")
    args = ap.parse_args()

    rows = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as name:
            tmp = Path(name)
            env = environment(tmp)
            run = tmp / "run"
            first = ("plain", "pipeline") if i % 2 == 0 else ("pipeline", "plain")
            got = {}
            for side in first:
                got[side] = plain(tmp, env) if side == "plain" else pipeline(tmp, env, run)
                print(f"round {i + 1}: {side:8s} {got[side][0]:7.1f} s  {got[side][1]}", flush=True)
            rerun, _ = timed([sys.executable, "-m", "rlaif", "run", str(RECIPE), "--out", str(run)], env,
                             tmp / "rerun.log")
            print(f"round {i + 1}: rerun    {rerun:7.1f} s", flush=True)
            rows.append((got["pipeline"], got["plain"], rerun))

    cores = len(os.sched_getaffinity(0))
    print(f"\n32 MT-Bench prompts x 2 answers (SmolLM2-135M, 256 tokens) + critique judge; {cores} cores; "
          f"each side a whole process")
    print(f"{'round':>5s} {'pipeline s':>10s} {'plain s':>8s} {'ratio':>6s} {'parsed: pipeline':>16s} {'plain':>8s} "
          f"{'answer tokens: pipeline':>23s} {'plain':>6s} {'rerun s':>8s} {'rerun/first':>11s}")
    for i, ((p_s, p), (v_s, v), r_s) in enumerate(rows, 1):
        print(f"{i:5d} {p_s:10.1f} {v_s:8.1f} {p_s / v_s:6.3f} {p['parsed']:>10d} of {p['judged']:<3d} "
              f"{v['parsed']:>3d} of {v['judged']:<2d} {p['output_tokens']:>23d} {v['output_tokens']:>6d} "
              f"{r_s:8.2f} {r_s / p_s:11.4f}")
    if len(rows) > 1:
        print(f"median ratio {statistics.median(p[0] / v[0] for p, v, _ in rows):.3f}, "
              f"median rerun/first {statistics.median(r / p[0] for p, _, r in rows):.4f}")


if __name__ == "__main__":
    main()
