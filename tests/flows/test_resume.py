"""A generation killed with SIGKILL mid-run recomputes none of its finished shards.

The killed run is a `rlaif generate` process of its own, generating through the session's vLLM
server (`rlaif serve-model`: a real engine, not loaded again for this test); the rerun is the same
command in this process, through the same server. tests/flows/test_kill.py kills whole runs at each stage."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.support.helpers import ROOT, SMOL_SETTINGS
from rlaif.cli.main import main

pytestmark = pytest.mark.engine


def test_kill_9_then_rerun_generates_only_what_was_missing(tmp_path, vllm_server, capsys):
    recipe = {
        "name": "resume", "shard_size": 2, "prompts": {"source": "mt_bench", "limit": 8},
        "hygiene": {"near_dup_threshold": None, "eval_prompts": None},  # MT-Bench's questions, kept
        "generators": [{"name": "smol", "model": "smollm2-135m-instruct", "endpoint": {"base_url": vllm_server},
                        "sampling": {"temperature": 0.7, "max_tokens": 96}}],
        "judge": {"name": "j", "model": "smollm2-135m-instruct"},
        "engine": SMOL_SETTINGS.model_dump(),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    shards = out / "completions"
    cmd = [sys.executable, "-m", "rlaif", "generate", str(path), "--out", str(out)]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(shards.glob("shard-*.jsonl")):
        assert proc.poll() is None, "generation ended before writing a shard"
        assert time.time() < deadline, "no shard written in time"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and anything it started
    proc.wait()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.glob("shard-*.jsonl")}
    assert 1 <= len(before) < 4, before

    assert main(["generate", str(path), "--out", str(out)]) == 0  # the rerun, in this process
    assert f"smol: {len(before)} of 4 shards already done" in capsys.readouterr().err
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.glob("shard-*.jsonl")}
    assert len(after) == 4
    assert all(after[name] == stamp for name, stamp in before.items())  # finished shards untouched
    rows = [line for p in shards.glob("shard-*.jsonl") for line in p.read_text().splitlines()]
    assert len(rows) == 8
