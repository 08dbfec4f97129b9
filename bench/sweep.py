"""Benchmark: a dDPO sweep (4 variants, one shared reference pass) against 4 separate dDPO runs.

    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/sweep.py            # tiny 2-layer model, 2 cores
    python bench/sweep.py --pairs 128 --max-length 256 --epochs 1

Both sides run `rlaif train dpo` on the same pairs, from the same tiny model, with the same four
variants (loss type and beta) and the same settings, each command its own process as a user types
it (a fresh Prefect home, no long-lived server: RLAIF_USE_SERVER=0):
    separate   four recipes, one dDPO block each, each in its own run directory: four commands,
               each computing the reference log-probs of the pairs itself (precompute_ref_log_probs)
    sweep      one recipe with `train.dpo.variants`, one run directory, one command: the first
               variant computes the reference pass and stores it (<run>/ref_logps/), the others read it
Then the sweep is run again unchanged (nothing trains, no log-probs computed) and once more with
another learning rate for every variant (all four retrain, every one reads the stored reference).
Prints for each: the commands' wall time, the time inside them (process start and imports left
out; each command's Prefect start and flow are inside), the reference forwards run (TRL's
compute_ref_log_probs calls, counted); then sweep / separate (goal <= 0.8) as commands and inside.
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
sys.path.insert(0, str(ROOT / "bench"))
VARIANTS = [{"name": "sigmoid-0.1", "loss_type": "sigmoid", "beta": 0.1},
            {"name": "sigmoid-0.01", "loss_type": "sigmoid", "beta": 0.01},
            {"name": "ipo-0.1", "loss_type": "ipo", "beta": 0.1},
            {"name": "hinge-0.1", "loss_type": "hinge", "beta": 0.1}]


def make_run(run: Path, data: Path) -> None:
    """A run directory whose dataset link points at the shared dataset version."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "dataset").symlink_to(data)


def block(cfg: dict) -> dict:
    return {"model": cfg["model"], "num_train_epochs": cfg["epochs"], "per_device_train_batch_size": cfg["batch"],
            "max_length": cfg["max_length"], "learning_rate": 1e-4, "warmup_steps": 0, "logging_steps": 1,
            "seed": 42, "save_steps": 10_000, "precompute_ref_log_probs": True}


def command(argv: list[str]) -> dict:
    """`rlaif <argv>` in this process, with TRL's reference forward counted; its figures."""
    from trl import DPOTrainer

    start = time.perf_counter()
    from rlaif.cli.main import main

    forwards = []
    real = DPOTrainer.compute_ref_log_probs

    def counted(self, *args, **kwargs):  # one call: one batch through the reference model
        forwards.append(1)
        return real(self, *args, **kwargs)

    DPOTrainer.compute_ref_log_probs = counted
    imported = time.perf_counter()
    code = main(argv)
    return {"code": code, "forwards": len(forwards), "in_command": time.perf_counter() - imported,
            "imports": imported - start}


def run_command(argv: list[str], env: dict, cwd: Path) -> dict:
    """One command as its own process, as a user runs it; wall time from start to exit."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--command", json.dumps(argv)], env=env, cwd=cwd,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines or json.loads(lines[-1][7:])["code"] != 0:
        raise SystemExit(f"rlaif {' '.join(argv)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return {**json.loads(lines[-1][7:]), "wall": wall}


def write_recipe(path: Path, recipe: dict) -> str:
    import yaml

    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def sides(cfg: dict, tmp: Path, env: dict) -> dict:
    """Four separate runs, then the sweep, its unchanged rerun and its rerun with a new learning rate."""
    data = Path(cfg["data"])
    train = lambda recipe, run: run_command(["train", "dpo", recipe, "--out", str(run)], env, tmp)  # noqa: E731
    separate = []
    for v in VARIANTS:
        run = tmp / "separate" / v["name"]
        make_run(run, data)
        overrides = {k: x for k, x in v.items() if k != "name"}
        separate.append(train(write_recipe(run.with_suffix(".yaml"), {"name": v["name"], "train": {
            "dpo": {**block(cfg), **overrides}}}), run))
    run = tmp / "sweep"
    make_run(run, data)
    sweep = {"name": "sweep", "train": {"dpo": {**block(cfg), "variants": VARIANTS}}}
    first = train(write_recipe(tmp / "sweep.yaml", sweep), run)
    rerun = train(write_recipe(tmp / "sweep.yaml", sweep), run)
    changed = {**sweep, "train": {"dpo": {**sweep["train"]["dpo"], "learning_rate": 5e-5}}}
    retrain = train(write_recipe(tmp / "sweep-lr.yaml", changed), run)
    states = [json.loads((run / "dpo" / v["name"] / "rlaif-stage.json").read_text()) for v in VARIANTS]
    return {"separate": separate, "sweep": first, "rerun": rerun, "retrain": retrain,
            "stored_files": len(list((run / "ref_logps").glob("*.arrow"))),
            "read": sum(s["metrics"].get("reference_read", 0) for s in states)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--command", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.command:
        print("RESULT " + json.dumps(command(json.loads(args.command))), flush=True)
        return 0

    from training import make_dataset, tiny_model  # bench/training.py: the same pairs and tiny model

    with tempfile.TemporaryDirectory(prefix="rlaif-bench-sweep-") as tmp:
        tmp = Path(tmp)
        cfg = {"model": str(tiny_model(tmp / "tiny")), "data": str(make_dataset(tmp / "data", args.pairs)),
               "epochs": args.epochs, "batch": args.batch, "max_length": args.max_length}
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "RLAIF_USE_SERVER": "0",
               "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "PREFECT_HOME": str(tmp / "prefect"),
               "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
        env.pop("PREFECT_API_URL", None)
        f = sides(cfg, tmp, env)

    def total(runs: list[dict], key: str) -> float:
        return sum(r[key] for r in runs)

    sep, sw = f["separate"], f["sweep"]
    steps = f"{args.pairs} pairs, max_length {args.max_length}, batch {args.batch}, {args.epochs:g} epoch(s)"
    print(f"4 dDPO variants ({', '.join(v['name'] for v in VARIANTS)}), tiny 2-layer model, {steps}")
    print("                               commands   in the command   reference forwards")
    print(f"  4 separate `rlaif train dpo`  {total(sep, 'wall'):7.1f} s  {total(sep, 'in_command'):7.1f} s  "
          f"{total(sep, 'forwards'):5d}")
    for label, r in (("1 sweep `rlaif train dpo`", sw), ("sweep rerun, unchanged", f["rerun"]),
                     ("sweep, new learning rate", f["retrain"])):
        print(f"  {label:<29} {r['wall']:7.1f} s  {r['in_command']:7.1f} s  {r['forwards']:5d}")
    print(f"  (stored reference files: {f['stored_files']}; variants that read it on the last run: {f['read']} of 4)")
    ratio, inside = sw["wall"] / total(sep, "wall"), sw["in_command"] / total(sep, "in_command")
    print(f"sweep / separate: {ratio:.2f} as commands (goal <= 0.8), {inside:.2f} inside the commands "
          f"(process start and imports left out; Prefect's start is inside); the unchanged rerun computed "
          f"{f['rerun']['forwards']} log-probs (goal 0)")
    return 0 if ratio <= 0.8 and f["rerun"]["forwards"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
