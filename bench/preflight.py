"""How long a configuration mistake takes to surface: seconds from `rlaif generate` to its error.

    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/preflight.py [--root DIR]

Each case is a small recipe with one mistake (a model that exists nowhere, a dead endpoint, a
prompt longer than the model's context, a second member whose model exists nowhere behind a good
one). Prints each case's wall time, exit code and first error line. `--root` runs the `rlaif` of
another checkout (e.g. the code before the preflight) on the same cases, for a before/after.
Prefect starts its own temporary server in runs that get that far (as a user's would).
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

SMOL = "smollm2-135m-instruct"
CASES = {
    "model found nowhere": {"generators": [{"name": "a", "model": "no-such-org/no-such-model"}]},
    "dead endpoint": {"generators": [{"name": "a", "model": "x", "endpoint": {"base_url": "http://127.0.0.1:1/v1",
                                                                               "max_retries": 0}}]},
    "prompt too long": {"generators": [{"name": "a", "model": SMOL}], "engine": {"max_model_len": 64}},
    "second member found nowhere": {"generators": [{"name": "a", "model": SMOL},
                                                   {"name": "b", "model": "no-such-org/no-such-model"}],
                                    "engine": {"max_model_len": 1024, "cpu_kv_cache_gb": 1}},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="checkout whose rlaif runs")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-preflight-"))
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PYTHONPATH": args.root}
    env.pop("PREFECT_API_URL", None)
    print(f"rlaif from {args.root}")
    print(f"{'case':30} {'seconds':>8} {'exit':>5}  first error line")
    for name, case in CASES.items():
        recipe = {"name": "bench", "prompts": {"source": "mt_bench", "limit": 4}, "hygiene": {"near_dup_threshold": None},
                  "judge": {"name": "uf", "model": SMOL}, **case}
        path = tmp / f"{name.replace(' ', '-')}.yaml"
        path.write_text(json.dumps(recipe))
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "rlaif", "generate", str(path), "--out", str(tmp / path.stem)],
                              cwd=args.root, env=env, capture_output=True, text=True, timeout=1800)
        seconds = time.perf_counter() - start
        first = next((line for line in done.stderr.splitlines() if line.startswith("error:")), "(none)")
        print(f"{name:30} {seconds:8.1f} {done.returncode:5}  {first[:150]}")


if __name__ == "__main__":
    main()
