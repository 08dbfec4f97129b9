"""Rehearsal benchmark: `rlaif rehearse` of every shipped recipe, timed per recipe.

    python bench/rehearse.py [--prompts 4] [--only zephyr-7b-beta]

A user's Hugging Face cache with every model and dataset the recipes name (rlaif/rehearsal/hub_cache.py:
tiny stand-ins under the real ids) is made in a temporary folder, with HF_HUB_OFFLINE=1 and the
key variables set, so the rehearsals resolve everything as on a machine that downloaded them.
Each recipe (the Zephyr chain is `sft.yaml dpo.yaml`, data, dSFT, dDPO, evaluate and MT-Bench) is
rehearsed into a fresh run directory; the table gives its seconds and exit code. The issue's goal:
the whole Zephyr chain in at most 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "quickstart": ["recipes/quickstart.yaml"],
    "ultrafeedback-gpt4o": ["recipes/ultrafeedback-gpt4o.yaml"],
    "zephyr-7b-beta": ["recipes/zephyr-7b-beta/sft.yaml", "recipes/zephyr-7b-beta/dpo.yaml"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--only", choices=sorted(RECIPES))
    args = p.parse_args()
    from rlaif.rehearsal.hub_cache import fill

    with tempfile.TemporaryDirectory(prefix="rlaif-bench-rehearse-") as tmp:
        home = fill(Path(tmp) / "huggingface", Path(tmp) / "tiny")
        env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "sk-bench",
               "PYTHONPATH": str(ROOT)}
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
        rows = []
        for name, recipes in RECIPES.items():
            if args.only and name != args.only:
                continue
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "rlaif", "rehearse", *recipes, "--prompts", str(args.prompts),
                                   "--out", str(Path(tmp) / "runs" / name)], cwd=ROOT, env=env,
                                  capture_output=True, text=True)
            seconds = time.perf_counter() - start
            rows.append((name, seconds, proc.returncode))
            steps = [line for line in proc.stdout.splitlines() if line.startswith("│")]
            print(f"{name}: {seconds:.0f} s, exit {proc.returncode}", flush=True)
            for line in steps:
                print("   ", line)
            if proc.returncode:
                print((proc.stdout + proc.stderr)[-2000:])
    print(f"\n{'recipe':<22} {'seconds':>8} {'exit':>5}")
    for name, seconds, code in rows:
        print(f"{name:<22} {seconds:>8.0f} {code:>5}")
    print(f"cores: {os.cpu_count()}")
    if any(code for _, _, code in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
