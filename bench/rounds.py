"""Benchmark: 3 on-policy rounds of dDPO on the quickstart's bundled models (flows/rounds.py), on a CPU.

    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/rounds.py              # 2 cores: about 15 minutes
    python bench/rounds.py --prompts 8 --held-out 8 --samples 2 --rounds 3 --out /tmp/rounds-bench

Runs `rlaif run recipes/quickstart.yaml --set rounds.count=3 ...` as a user types it, in its own
process and a fresh run directory: round 1 is the quickstart (SmolLM2-135M-Instruct and Gemma 3 270M
answer, SmolLM2 judges on UltraFeedback's four aspects, dSFT then dDPO of SmolLM2), on `--prompts`
prompts; rounds 2 and 3 are on-policy: the last round's dDPO model answers `--prompts` fresh prompts
`--samples` times, the judge rates them, best-vs-worst of the policy's answers makes the pairs, and
dDPO trains from the last round's model with the dSFT model as reference. Every round's model and
the dSFT model answer `--held-out` prompts no round trains on (greedy), which the judge scores.

Prints, per round: the win rate of its model against round 1's and against the dSFT model on the
held-out prompts, the judge's expected score of its held-out answers (the dSFT model's beside it),
their mean length in tokens, the implicit reward's accuracy on its own test split, its training
pairs, and its seconds (its stages', its held-out answers' and their judging and measuring; round 1
with the dSFT model's held-out answers); then the rerun of the finished series (nothing computed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def seconds_per_round(stages: list[dict], rounds: int) -> dict[int, float]:
    """Each stage's seconds to its round: `round k: ...`, and the held-out answers and verdicts of
    round k's model (`round-k`), the dSFT model's to round 1."""
    out = {k: 0.0 for k in range(1, rounds + 1)}
    for s in stages:
        m = re.match(r"round (\d+):", s["stage"]) or re.search(r"round-(\d+)", s["stage"])
        k = int(m.group(1)) if m else 1 if "dsft" in s["stage"] else None
        if k is not None:
            out[k] += s["seconds"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompts", type=int, default=8, help="prompts per round (round 1: the first N of `starter`)")
    p.add_argument("--held-out", type=int, default=8)
    p.add_argument("--samples", type=int, default=2, help="the policy's answers per prompt")
    p.add_argument("--out", help="run directory (default: a new temporary one)")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="rlaif-rounds-")) / "run"
    sets = [f"prompts.limit={args.prompts}", f"rounds.count={args.rounds}", f"rounds.per_round={args.prompts}",
            f"rounds.held_out={args.held_out}", f"rounds.samples={args.samples}"]
    cmd = [sys.executable, "-m", "rlaif", "run", str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(out)]
    cmd += [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    print("$", " ".join(cmd[2:]), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    stages = json.loads((out / "summary.json").read_text())  # the first run's: the rerun's are all cached
    start = time.perf_counter()
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    rerun = time.perf_counter() - start

    summary = json.loads((out / "rounds" / "summary.json").read_text())
    per_round = seconds_per_round(stages, args.rounds)
    dsft = summary["dsft"] or {}

    def f(x, spec=".3f"):
        return "-" if x is None else format(x, spec)

    print(f"\n{args.rounds} rounds, {args.prompts} prompts a round, {args.samples} policy answers a prompt, "
          f"{dsft.get('prompts')} held-out prompts; run dir {out}")
    print(f"dSFT model on the held-out prompts: judge score {f(dsft.get('judge_score'))}, "
          f"answer tokens {f(dsft.get('answer_tokens'), '.1f')}")
    head = ("round", "win vs round 1", "win vs dSFT", "judge score", "answer tokens", "reward acc", "pairs", "seconds")
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    for r in summary["rows"]:
        k = r["round"]
        vs1 = 0.5 if k == 1 else r["win vs round 1"]  # round 1 against itself: even
        print(f"| {k} | {f(vs1)} | {f(r['win vs dSFT'])} | {f(r['judge score'])} | {f(r['answer tokens'], '.1f')} | "
              f"{f(r['reward acc'])} | {r['pairs']} | {per_round[k]:.0f} |")
    print(f"\nwall: {wall:.0f} s for the series (process start, Prefect and the table included); "
          f"unchanged rerun: {rerun:.1f} s (exit {again.returncode}), "
          f"{sum(not s['cached'] for s in json.loads((out / 'summary.json').read_text()) if s['stage'] != 'rounds' and not s['stage'].endswith('prompts'))} stages computed")


if __name__ == "__main__":
    main()
