"""The Batch API engine against the strict OpenAI stand-in (rlaif/rehearsal/openai_server/) over real HTTP:
results mapped back by custom id, expired and failed lines sent again, a batch created by a killed
run found again, refusals, and `rlaif run` killed with SIGKILL while its batch is in progress,
resumed by the rerun without sending any request twice. No model is loaded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.helpers import ROOT
from rlaif.core.records import Judgement
from rlaif.engines.base import Request, Sampling
from rlaif.engines.batch_api import BatchEngine, custom_id
from rlaif.engines.openai_endpoint import Endpoint, EndpointRefused

from rlaif.rehearsal.openai_server import OpenAIServer

KEY = "sk-test-key-123456"


@pytest.fixture
def srv(monkeypatch):
    monkeypatch.setenv("TEST_OPENAI_KEY", KEY)
    with OpenAIServer(api_key=KEY) as s:
        yield s


class Once(set):
    """Custom ids the server expires or fails the first time only."""

    def __contains__(self, x) -> bool:
        found = super().__contains__(x)
        self.discard(x)
        return found


def engine(srv, tmp_path, model="gpt-4o-mini", **kw) -> BatchEngine:
    e = Endpoint(base_url=srv.base_url, api_key_env="TEST_OPENAI_KEY", provider="openai", batch=True,
                 batch_poll_s=0.05, max_retries=2, **kw)
    return BatchEngine(e, model, tmp_path / "batches")


def requests(n: int) -> list[Request]:
    return [Request(key=f"q{i}", sampling=Sampling(temperature=0.0, max_tokens=16), seed=i, logprobs=5,
                    messages=[{"role": "user", "content": f"Say {i}."}]) for i in range(n)]


def batch_posts(srv) -> int:
    return sum(1 for r in srv.requests if r["method"] == "POST" and r["path"] == "/v1/batches")


def test_a_batch_answers_every_request_in_order(srv, tmp_path):
    srv.responder = lambda body: "answer to " + body["messages"][-1]["content"]
    progress = []
    results = engine(srv, tmp_path).generate(requests(5), progress.append)
    assert [r.text for r in results] == [f"answer to Say {i}." for i in range(5)]
    assert all(r.ok and r.tokens and r.output_tokens > 0 for r in results)  # log-probs and usage too
    assert sum(progress) == 5 and batch_posts(srv) == 1
    (upload,) = [r["body"] for r in srv.requests if r["path"] == "/v1/files"]
    assert upload["purpose"] == "batch" and upload["file"]["filename"].endswith(".jsonl")
    (state,) = (tmp_path / "batches").glob("*.json")
    assert [b[:6] for b in json.loads(state.read_text())["batches"]] == ["batch_"]


def test_expired_and_failed_lines_go_out_again(srv, tmp_path):
    reqs = requests(4)
    srv.batch_expire, srv.batch_fail = Once({custom_id(1, "q1")}), Once({custom_id(2, "q2")})
    results = engine(srv, tmp_path).generate(reqs)
    assert all(r.ok for r in results)
    assert batch_posts(srv) == 2  # the first batch, then one for the expired and the failed line
    assert srv.processed[custom_id(2, "q2")] == 2 and srv.processed[custom_id(0, "q0")] == 1
    srv.batch_fail = {custom_id(1, "q3")}  # fails every time: retryable after max_retries new batches
    before = batch_posts(srv)
    out = engine(srv, tmp_path / "again").generate([reqs[0], reqs[3]])
    assert out[0].ok and not out[1].ok and out[1].retryable and out[1].error.startswith("HTTP 500")
    assert batch_posts(srv) - before == 3  # the first, then max_retries (2) for the failing line


def test_a_batch_created_by_a_killed_run_is_found_again(srv, tmp_path):
    first = engine(srv, tmp_path).generate(requests(3))
    for state in (tmp_path / "batches").glob("*.json"):
        state.unlink()  # as if killed between creating the batch and writing its state
    again = engine(srv, tmp_path).generate(requests(3))
    assert [r.text for r in again] == [r.text for r in first] and batch_posts(srv) == 1
    assert max(srv.processed.values()) == 1


def test_a_refused_line_stops_the_stage(srv, tmp_path, monkeypatch):
    bad = [Request(key="x", sampling=Sampling(), seed=0, messages=[{"role": "bogus", "content": "hi"}])]
    with pytest.raises(EndpointRefused, match=r"HTTP 400: Invalid value: 'bogus'.*\(batch batch_"):
        engine(srv, tmp_path).generate(bad)
    with pytest.raises(EndpointRefused, match="HTTP 404"):
        engine(srv, tmp_path, model="gpt-9").generate(requests(1))
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-wrong-key-000000")
    before = len(srv.requests)
    with pytest.raises(EndpointRefused, match=r"HTTP 401: Incorrect API key provided.*\$TEST_OPENAI_KEY"):
        engine(srv, tmp_path / "bad-key").generate(requests(2))
    assert [r["status"] for r in srv.requests[before:]] == [401]  # the upload, refused; nothing after it


# ----------------------------------------------------------------------------- kill -9 and resume
def run_recipe(tmp_path: Path, srv) -> Path:
    recipe = {
        "name": "batch", "shard_size": 2, "prompts": {"source": "starter", "limit": 6},
        "hygiene": {"near_dup_threshold": None},
        "generators": [{"name": f"g{i}", "model": "gpt-4o-mini", "sampling": {"temperature": 1.0, "max_tokens": 24, "seed": i},
                        "endpoint": {"base_url": srv.base_url, "api_key_env": "TEST_OPENAI_KEY"}} for i in range(3)],
        "judge": {"name": "uf", "model": "gpt-4o-mini",
                  "endpoint": {"base_url": srv.base_url, "api_key_env": "TEST_OPENAI_KEY", "provider": "openai",
                               "batch": True, "batch_poll_s": 0.1}},
        "binarize": {"test_fraction": 0},
        "flow": {"retries": 0},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_kill_9_during_a_batch_then_the_rerun_resumes_it(srv, tmp_path, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    recipe, out = run_recipe(tmp_path, srv), tmp_path / "run"
    cmd = [sys.executable, "-m", "rlaif", "run", str(recipe), "--out", str(out)]
    env = {**os.environ, "TEST_OPENAI_KEY": KEY, "PREFECT_API_URL": PREFECT_API_URL.value()}
    srv.pause_batches()  # the batch stays in progress until the run is killed
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (list((out / "batches").glob("*.json")) and any(r["path"].startswith("/v1/batches/") for r in srv.requests)):
        assert proc.poll() is None, "the run ended before its batch was polled"
        assert time.time() < deadline, "no batch in time"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert batch_posts(srv) == 1 and not list((out / "judgements").rglob("shard-*.jsonl"))
    generated = srv.count("/chat/completions")
    assert generated == 6 * 3  # live generation: every prompt by every member, once

    srv.resume_batches()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert batch_posts(srv) == 1  # resumed, not created again
    assert sum(1 for r in srv.requests if r["method"] == "POST" and r["path"] == "/v1/files") == 1
    assert srv.count("/chat/completions") == generated  # generation was not sent again either
    assert len(srv.processed) == 6 * 4 and max(srv.processed.values()) == 1  # joint: 4 aspects per prompt, each once
    judged = [Judgement.model_validate_json(line) for p in (out / "judgements" / "uf").glob("shard-*.jsonl")
              for line in p.read_text().splitlines()]
    assert len(judged) == 18 and all(j.status == "parsed" for j in judged)
    assert (out / "dataset").exists()


SMOLLM2 = Path.home() / ".cache/rlaif/models/smollm2-135m-instruct"


@pytest.mark.skipif(not os.environ.get("RLAIF_VLLM_BATCH_TEST"), reason="loads vLLM (minutes on CPU); run with "
                    "RLAIF_VLLM_BATCH_TEST=1 under flock /tmp/rlaif-heavy.lock")
def test_joint_rating_through_a_batch_answered_by_vllm(tmp_path, monkeypatch):
    """The judge stage through the Batch API, its lines answered by vLLM's own batch runner on SmolLM2:
    strict schemas (a joint one with $defs) and log-probs, as a real model writes them."""
    from tests.judges.test_hosted import completions_run

    from rlaif.judges.spec import JudgeSpec
    from rlaif.judges.stage import run_judge

    monkeypatch.setenv("TEST_OPENAI_KEY", KEY)
    store, pm, cm = completions_run(tmp_path, prompts=2, per_prompt=3)
    with OpenAIServer(api_key=KEY, vllm_model=str(SMOLLM2)) as srv:
        e = Endpoint(base_url=srv.base_url, api_key_env="TEST_OPENAI_KEY", provider="openai", batch=True,
                     batch_poll_s=0.5)
        spec = JudgeSpec(name="uf", model="gpt-4o-mini", aspects=["helpfulness", "honesty"], endpoint=e, retries=0)
        records = list(store.read_manifest(run_judge(pm, cm, spec, store), Judgement))
    assert spec.mode == "joint" and len(records) == 6 and not [r for r in records if r.status == "failed"]
    assert sum(r.status == "parsed" for r in records) >= 4  # a 135M model may overrun max_tokens now and then
    for r in records:
        for a in r.aspects.values():
            if a.rating is not None:
                assert sum(a.probs.values()) == pytest.approx(1.0) and len(a.order) == 3
