"""`kill -9` of a real `rlaif run` while it generates, judges, publishes and trains: each rerun
finishes the run with nothing recomputed that was done (finished shards keep their inode and
mtime, no request is sent twice) and nothing lost (every row there, no temp file or half version).

Kill points are reached for real: the test server holds a request until the test has killed the
run (generation, judging), or the test watches the run directory for the unfinished version
folder (publishing) and for a checkpoint (training).
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.support.faulty import Faulty, prefect_env, recipe, rlaif, sent, stamps, url, wait_for  # noqa: F401 - url: a fixture


def kill(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the run and anything it started
    proc.wait()


def test_kill_9_while_generating_judging_and_publishing_then_reruns_finish_it(url, tmp_path):
    path, out, env = recipe(tmp_path, url), tmp_path / "run", prefect_env(tmp_path)
    cmd = ["run", str(path), "--out", str(out)]

    # 1. generating: gen-a has answered two prompts (one shard each) and waits on the third
    Faulty.hold = ("gen", "Say three.")
    proc = rlaif(*cmd, env=env, wait=False)
    wait_for(lambda: "Say three." in sent("gen") and len(stamps(out, "completions/shard-*.jsonl")) == 2, proc)
    kill(proc)
    generated = stamps(out, "completions/shard-*.jsonl")

    # 2. judging: the rerun generates only what was missing, judges two chunks, waits on the third
    Faulty.reset()
    Faulty.hold = ("judge", "Say three.")
    proc = rlaif(*cmd, env=env, wait=False)
    wait_for(lambda: any("Say three." in t for t in sent("judge")) and len(stamps(out, "judgements/uf/shard-*.jsonl")) == 2, proc)
    kill(proc)
    assert ("gen", "gen-a", "Say one.") not in Faulty.seen and ("gen", "gen-a", "Say two.") not in Faulty.seen
    assert len(sent("gen")) == 6
    assert {k: stamps(out, "completions/shard-*.jsonl")[k] for k in generated} == generated
    generated = stamps(out, "completions/shard-*.jsonl")
    judged = stamps(out, "judgements/uf/shard-*.jsonl")
    assert len(generated) == 8

    # 3. publishing: killed while the version is still being written under its temporary name
    Faulty.reset()
    proc = rlaif(*cmd, env=env, wait=False)
    wait_for(lambda: any((out / "versions").glob(".incoming-*")), proc, step=0.005)
    kill(proc)
    assert sent("gen") == [] and len(sent("judge")) == 4  # the two chunks not judged yet, two members each
    assert not (out / "dataset").exists() and not list((out / "versions").glob("[0-9]*"))
    assert stamps(out, "completions/shard-*.jsonl") == generated
    assert {k: stamps(out, "judgements/uf/shard-*.jsonl")[k] for k in judged} == judged
    judged = stamps(out, "judgements/uf/shard-*.jsonl")

    # 4. the rerun publishes and finishes; nothing is sent, no shard rewritten, nothing left over
    Faulty.reset()
    done = rlaif(*cmd, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Faulty.seen == []
    assert stamps(out, "completions/shard-*.jsonl") == generated and stamps(out, "judgements/uf/shard-*.jsonl") == judged
    assert not list(out.rglob(".incoming-*")) and not list(out.rglob("*.tmp"))
    assert [p.name for p in (out / "versions").iterdir()] == ["0001"] and (out / "dataset").resolve().name == "0001"
    counts = json.loads((out / "dataset" / "manifest.json").read_text())["counts"]
    assert counts["pairs"] == 4 and counts["completions"]["ok"] == 8 and counts["judgements"]["parsed"] == 8


@pytest.mark.engine
def test_kill_9_while_training_then_the_rerun_resumes_from_the_last_whole_checkpoint(url, tmp_path, tiny_model_dir):
    sft = {"model": tiny_model_dir, "max_steps": 4, "save_steps": 1, "save_total_limit": 2,
           "per_device_train_batch_size": 1, "max_length": 64, "learning_rate": 1e-4}
    path, out, env = recipe(tmp_path, url, train__sft=sft), tmp_path / "run", prefect_env(tmp_path)
    cmd = ["run", str(path), "--out", str(out)]
    proc = rlaif(*cmd, env=env, wait=False)
    wait_for(lambda: (out / "sft" / "checkpoint-2").exists(), proc, timeout=600)  # checkpoint-1 is whole
    kill(proc)
    assert not (out / "sft" / "rlaif-stage.json").exists()
    done_before = lambda: (stamps(out, "completions/shard-*") | stamps(out, "judgements/uf/shard-*")  # noqa: E731
                           | stamps(out, "versions/**/*"))
    before = done_before()

    Faulty.reset()
    done = rlaif(*cmd, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((out / "sft" / "rlaif-stage.json").read_text())
    assert state["resumed_from"] in (str(out / "sft" / "checkpoint-1"), str(out / "sft" / "checkpoint-2"))
    assert state["metrics"]["steps"] == 4
    assert Faulty.seen == []  # nothing generated or judged again
    assert done_before() == before
    assert (out / "sft" / "model.safetensors").exists()
