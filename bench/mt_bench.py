"""Benchmark: the Zephyr chain at quickstart size on this machine, MT-Bench included.

    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/mt_bench.py [--run runs/quickstart] [--limit 8]
        [--max-tokens 256] [--judge NAME]

Runs `rlaif run recipes/quickstart.yaml --out RUN` when RUN has no dDPO model yet, then
`rlaif evaluate RUN --mt-bench --limit N --max-tokens M` twice (the second finds every answer and
grading in its shards and computes nothing). Prints the wall time of each command, the MT-Bench
table of base, dSFT and dDPO (score over both turns, per turn and per category, gradings parsed),
and the judge's bias figures from the dataset card.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rlaif(*args: str) -> float:
    """Run one rlaif command from the repository root; returns its wall time (a failure stops here)."""
    env = {**os.environ, "COLUMNS": "160"}
    env.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rlaif", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"rlaif {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/quickstart")
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--judge", help="a judge of the quickstart recipe (default: its binarize judge)")
    a = p.parse_args()
    run = (ROOT / a.run).resolve()
    if not (run / "dpo" / "config.json").exists():
        print(f"rlaif run recipes/quickstart.yaml: {rlaif('run', 'recipes/quickstart.yaml', '--out', str(run)):.0f} s")
    cmd = ["evaluate", str(run), "--mt-bench", "--limit", str(a.limit), "--max-tokens", str(a.max_tokens)]
    cmd += ["--judge", a.judge] if a.judge else []
    first, again = rlaif(*cmd), rlaif(*cmd)
    judge = a.judge or json.loads((run / "recipe.json").read_text())["judges"][0]["name"]
    result = json.loads((run / "eval" / "mt_bench" / f"scores.{judge}.json").read_text())
    print(f"rlaif {' '.join(cmd[:1] + ['RUN'] + cmd[2:])}: {first:.0f} s; again (all in shards): {again:.0f} s")
    print(f"MT-Bench, {len(result['questions'])} questions x 2 turns, answers <= {a.max_tokens} tokens, "
          f"judge {result['judge']} ({result['judge_model']}):")
    print((run / "eval" / "mt_bench" / f"table.{judge}.md").read_text())
    for label, s in result["models"].items():
        print(f"  {label}: graded {s['graded']}, unparsed {s['unparsed']}, failed {s['failed']}, "
              f"unanswered {s['unanswered']} of {s['turns']} turns ({s['model']})")
    card = (run / "dataset" / "README.md").read_text()
    if "## The judge's biases" in card:
        print("\nThe judge's biases, from the dataset card:")
        print(card[card.index("## The judge's biases"):card.index("## Plots")].split("\n\n", 2)[2])


if __name__ == "__main__":
    main()
