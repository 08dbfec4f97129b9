"""Benchmark: our dDPO stage (training.dpo.train_dpo) against a plain TRL DPOTrainer script.

    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/training.py              # tiny 2-layer model
    python bench/training.py --model smollm2-135m-instruct --steps 8 --dataset runs/quickstart/dataset

Both sides train the same model on the same pairs with the same settings (batch, steps, max_length,
beta, learning rate, seed, no checkpoints), each in its own subprocess so their peak memory is their
own. Prints, for each: samples per second as TRL's Trainer measures it (train() alone), the wall
time of the whole call (loading, data preparation, saving included), and the peak memory (CPU: the
process's max RSS; GPU: torch.cuda.max_memory_allocated); then ours / plain samples/s (goal >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_dataset(out: Path, n: int = 64) -> Path:
    """n pairs of varied lengths in the run dataset format (train_prefs / test_prefs)."""
    from datasets import Dataset, DatasetDict

    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"Explain step {i} of making bread. " * (1 + i % 4)}]
        rows.append({"prompt": prompt, "prompt_id": f"p{i}",
                     "chosen": [{"role": "assistant", "content": f"Step {i}: knead the dough well. " * (2 + i % 5)}],
                     "rejected": [{"role": "assistant", "content": "Bread is food. " * (1 + i % 3)}]})
    DatasetDict({"train_prefs": Dataset.from_list(rows), "test_prefs": Dataset.from_list(rows[:4])}
                ).save_to_disk(str(out))
    return out


def tiny_model(out: Path) -> Path:
    """SmolLM2-135M's config cut to 2 layers, random weights (as the tests' fixture)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rlaif.engines.models import resolve_model

    src = resolve_model("smollm2-135m-instruct")
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(src)
    config.num_hidden_layers = 2
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(side: str, cfg: dict) -> dict:
    """One training run in this process; returns its figures."""
    import torch

    torch.manual_seed(cfg["seed"])
    out = Path(cfg["out"]) / side
    start = time.perf_counter()
    if side == "ours":
        from rlaif.training.dpo import DPOSpec, train_dpo

        spec = DPOSpec(model=cfg["model"], beta=cfg["beta"], learning_rate=cfg["lr"], max_steps=cfg["steps"],
                       per_device_train_batch_size=cfg["batch"], max_length=cfg["max_length"],
                       warmup_steps=0, lr_scheduler_type="linear", logging_steps=1, seed=cfg["seed"],
                       save_steps=cfg["steps"] + 1)  # no checkpoint inside the run, as the plain script
        metrics = train_dpo(cfg["dataset"], spec, out)
    else:  # what a user writes by hand from TRL's docs
        from datasets import load_from_disk
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        gpu = torch.cuda.is_available()
        tok = AutoTokenizer.from_pretrained(cfg["model"])
        model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)  # bf16 autocast on GPU, as ours
        args = DPOConfig(output_dir=str(out), beta=cfg["beta"], learning_rate=cfg["lr"], max_steps=cfg["steps"],
                         per_device_train_batch_size=cfg["batch"], max_length=cfg["max_length"],
                         warmup_steps=0, lr_scheduler_type="linear", logging_steps=1, seed=cfg["seed"],
                         use_cpu=not gpu, bf16=gpu, report_to=[], save_strategy="no")
        train = load_from_disk(cfg["dataset"])["train_prefs"]
        trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tok)
        metrics = trainer.train().metrics
        trainer.save_model(str(out))
    return {"side": side, "samples_per_s": metrics["train_samples_per_second"],
            "train_s": metrics["train_runtime"], "wall_s": time.perf_counter() - start,
            "peak_mb": peak_memory_mb()}


def run_side(side: str, cfg: dict) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--worker", side, "--config", json.dumps(cfg)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{side} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny (2-layer SmolLM2) or any model name / dir")
    p.add_argument("--dataset", help="a run dataset dir (default: 64 written pairs)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="runs per side, alternating; the best is kept")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(worker(a.worker, json.loads(a.config))), flush=True)
        return

    import torch

    from rlaif.engines.models import resolve_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = str(tiny_model(tmp / "tiny")) if a.model == "tiny" else resolve_model(a.model)
        dataset = str(Path(a.dataset).resolve()) if a.dataset else str(make_dataset(tmp / "data"))
        cfg = {"model": model, "dataset": dataset, "steps": a.steps, "batch": a.batch, "max_length": a.max_length,
               "beta": 0.1, "lr": 5e-6, "seed": 42, "out": str(tmp / "out")}
        best: dict[str, dict] = {}
        for _ in range(a.repeats):
            for side in ("plain", "ours"):
                r = run_side(side, cfg)
                if side not in best or r["samples_per_s"] > best[side]["samples_per_s"]:
                    best[side] = r
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    mem = "GPU max_memory_allocated" if torch.cuda.is_available() else "max RSS"
    print(f"dDPO benchmark on {device}: model {a.model}, {a.steps} steps x batch {a.batch}, max_length "
          f"{a.max_length}, best of {a.repeats}")
    print(f"{'':8}{'samples/s':>11}{'train s':>9}{'wall s':>9}{'peak MiB':>10}  ({mem})")
    for side in ("plain", "ours"):
        r = best[side]
        print(f"{side:8}{r['samples_per_s']:>11.2f}{r['train_s']:>9.1f}{r['wall_s']:>9.1f}{r['peak_mb']:>10.0f}")
    print(f"ratio ours / plain samples/s: {best['ours']['samples_per_s'] / best['plain']['samples_per_s']:.3f} "
          f"(goal >= 0.95)")


if __name__ == "__main__":
    main()
