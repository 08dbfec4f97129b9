"""A real two-node Ray cluster on 127.0.0.1: generation and judging placed on both nodes, a worker
killed mid-run, every row there once; balanced endpoints; engine settings over the recipe's.

The cluster (a head and a second node with a resource of its own, `node2`) is started once for the
module with `ray start`, and everything it started is stopped at the end: the two node process
groups, and every worker process recorded in the shards' metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.support.endpoints import asked, judging, posted, said, serving, verdict
from tests.support.helpers import ROOT, free_port, write_prompts
from rlaif.core.records import Completion, Judgement
from rlaif.core.store import RunStore
from rlaif.engines.base import EngineSettings, Request, Sampling
from rlaif.engines.balanced import BalancedEngine
from rlaif.engines.openai_endpoint import Endpoint
from rlaif.cli.main import main

# `ray start` with Ray kept on 127.0.0.1 (rlaif.runners.ray.keep_on_loopback)
RAY_START = ("import sys; from rlaif.runners.ray import keep_on_loopback; keep_on_loopback(); "
             "from ray.scripts.scripts import main; sys.argv = ['ray', *sys.argv[1:]]; main()")
DELAY_S = 0.1  # each completion takes this long: the run lasts long enough to lose a worker in it


def ray_start(*args: str, temp: str) -> subprocess.Popen:
    log = open(Path(temp) / f"node-{len(list(Path(temp).glob('node-*')))}.log", "w")
    return subprocess.Popen([sys.executable, "-c", RAY_START, "start", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                             "--disable-usage-stats", "--block", *args], cwd=ROOT, stdout=log, stderr=log,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def own_token(temp: str, env: pytest.MonkeyPatch) -> None:
    """Ray's token authentication with a token of this cluster's own (not the user's ~/.ray one)."""
    import secrets

    token = Path(temp) / "auth_token"
    token.write_text(secrets.token_hex(32))
    env.setenv("RAY_AUTH_MODE", "token")
    env.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    reset_auth_token_state()


def reset_auth_token_state() -> None:
    """This process reads the auth variables again (Ray caches them when first imported)."""
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()


def stop(proc: subprocess.Popen) -> None:
    """The node's processes and all they started (workers set their own process group)."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=15)
    proc.wait(15)


@pytest.fixture(scope="module")
def ray_cluster():
    """(address, {"head": node id, "node2": node id}, pids): pids collects the workers to stop."""
    with two_nodes() as cluster:
        yield cluster


@contextmanager
def two_nodes():
    """A head and a second node (resource `node2`) on 127.0.0.1, in this process's environment (which
    their workers inherit); everything they started is stopped at the end."""
    import ray

    from rlaif.runners.ray import connect

    temp = tempfile.mkdtemp(prefix="rlaif-ray-", dir="/tmp")  # Ray's socket paths must stay short
    env = pytest.MonkeyPatch()
    own_token(temp, env)
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = [ray_start("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}", temp=temp)]
    pids: set[int] = set()
    try:
        deadline = time.time() + 120
        while True:  # the head answers
            try:
                connect(address)
                break
            except Exception:
                if time.time() > deadline or nodes[0].poll() is not None:
                    raise
                time.sleep(1)
        nodes.append(ray_start(f"--address={address}", '--resources={"node2": 1}', temp=temp))
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.time() < deadline and nodes[1].poll() is None, "the second node did not join"
            time.sleep(0.5)
        ids = {("node2" if "node2" in n["Resources"] else "head"): n["NodeID"] for n in ray.nodes() if n["Alive"]}
        ray.shutdown()  # each flow run connects on its own
        yield address, ids, pids
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for proc in nodes:
            stop(proc)
        for pid in pids:  # workers outlive their raylet only briefly; none is left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        env.undo()
        reset_auth_token_state()
        shutil.rmtree(temp, ignore_errors=True)


def slow_model(body):
    """The answers of a slow server (served with `delay=DELAY_S`): a completion names its model and
    prompt; a judge request (it carries a response_format) rates model a's answers 5 and others 3."""
    text = asked(body)
    if judging(body):
        return verdict(5 if "answer of a:" in text else 3)
    return said(f"answer of {body['model']}: {text}")


def metas(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in root.rglob("shard-*.meta.json")]


def kill_a_worker_of(node: str, run: Path, killed: list[int], stop_looking: threading.Event, member: str = "b") -> None:
    """Once `member`'s first shard made on `node` is written, kill the worker that made it. `b` has one
    worker for its 8 shards, so its next shard is in flight then (an `a` replica there might have
    none left on a loaded machine, and the re-queue would go unseen)."""
    while not stop_looking.is_set():
        for m in metas(run / "completions") if (run / "completions").is_dir() else []:
            if m.get("worker", {}).get("node") == node and m.get("name") == member:
                pid = int(m["worker"]["pid"])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.01)


def test_two_nodes_share_the_work_and_a_lost_worker_loses_no_row(ray_cluster, tmp_path, prefect_harness, monkeypatch):
    address, nodes, pids = ray_cluster
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # `--ray` sets it for the command; put back after
    prompts = [f"Question {i}: what is {i} squared?" for i in range(16)]
    write_prompts(tmp_path / "prompts.jsonl", prompts)
    with serving(slow_model, models=("a", "b", "judge"), delay=DELAY_S) as srv:
        url = srv.base_url
        endpoint = {"base_url": url, "max_retries": 0}
        recipe = {
            "name": "two-nodes", "shard_size": 2, "prompts": {"source": str(tmp_path / "prompts.jsonl")},
            "hygiene": {"near_dup_threshold": None},
            "generators": [{"name": "a", "model": "a", "endpoint": endpoint, "engine": {"replicas": 2}},
                           # b asks for the second node's own resource: all its shards are made there
                           {"name": "b", "model": "b", "endpoint": endpoint, "engine": {"resources": {"node2": 0.5}}}],
            "judge": {"name": "uf", "model": "judge", "aspects": ["helpfulness"], "endpoint": endpoint,
                      "engine": {"replicas": 2}},
            "binarize": {"test_fraction": 0}, "flow": {"retries": 0},
        }
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        run = tmp_path / "run"
        killed: list[int] = []
        done = threading.Event()
        killer = threading.Thread(target=kill_a_worker_of, args=(nodes["node2"], run, killed, done), daemon=True)
        killer.start()
        try:
            assert main(["run", str(path), "--out", str(run), "--ray", address]) == 0
        finally:
            done.set()
            pids.update(int(m["worker"]["pid"]) for m in metas(run) if m.get("worker"))
        summary = {r["stage"]: r for r in json.loads((run / "summary.json").read_text())}
        rerun_ok = main(["run", str(path), "--out", str(run), "--ray", address]) == 0
        again = {r["stage"]: r for r in json.loads((run / "summary.json").read_text())}

    assert killed, "no shard was made on the second node"
    ray_notes = summary["generate"]["notes"]["ray"]
    assert ray_notes["re-queued"] >= 1  # the killed worker's shard in flight went back to the queue
    store = RunStore(run)
    completions = [c for k in store.keys("completions") for c in store.iter("completions", k, Completion)]
    assert Counter((c.prompt_id, c.model) for c in completions) == {(f"p{i}", m): 1 for i in range(16) for m in "ab"}
    assert all(c.ok for c in completions)
    judged = [j for k in store.keys("judgements/uf") for j in store.iter("judgements/uf", k, Judgement)]
    assert Counter(j.completion_id for j in judged) == {c.completion_id: 1 for c in completions}
    assert all(j.status == "parsed" for j in judged)
    made = [m for m in metas(run / "completions") + metas(run / "judgements") if m.get("worker")]
    assert len(made) == 8 * 2 + 8  # every generation and judge shard was made on the cluster
    assert {m["worker"]["node"] for m in made} == {nodes["head"], nodes["node2"]}  # on both nodes
    assert {m["worker"]["node"] for m in made if m["name"] == "b"} == {nodes["node2"]}  # placed by its resource
    assert {m["worker"]["host"] for m in made} == {"127.0.0.1"}
    assert summary["binarize"]["count_out"] == 16  # a's answers beat b's on every prompt
    # the unchanged rerun finds every shard done: nothing made again, no worker started
    assert rerun_ok and all(again[s]["cached"] for s in ("generate", "judge", "binarize"))
    assert "ray" not in again["generate"]["notes"]


def test_requests_are_balanced_over_servers_and_a_dead_one_is_skipped():
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    pong = lambda body: said("pong")  # noqa: E731
    with serving(pong, models=("m",)) as a, serving(pong, models=("m",)) as b:
        one, two = a.base_url, b.base_url

        def ports() -> Counter:  # requests answered, by the port of the server that answered them
            return Counter({s.port: len(posted(s)) for s in (a, b) if posted(s)})

        engine = BalancedEngine(Endpoint(base_url=dead, base_urls=[one, two], max_retries=0, max_concurrency=2), "m")
        requests = [Request(key=str(i), sampling=Sampling(max_tokens=4), seed=i, messages=[{"role": "user", "content": "hi"}])
                    for i in range(20)]
        results = engine.generate(requests)
        assert [r.text for r in results] == ["pong"] * 20  # in order, every one answered
        seen = ports()
        assert sorted(seen) == sorted(int(u.rsplit(":", 1)[1].split("/")[0]) for u in (one, two))
        assert min(seen.values()) >= 4  # both live servers took a share
        assert engine.live() == [1, 2]  # the dead one is skipped until its cooldown ends
        engine.generate(requests[:4])
        assert sum(ports().values()) - sum(seen.values()) == 4


def test_when_every_server_fails_the_rows_come_back_retryable():
    down = {"models": ("m",), "fault": lambda path, body: 503 if body else None}
    with serving(**down) as a, serving(**down) as b:
        engine = BalancedEngine(Endpoint(base_url=a.base_url, base_urls=[b.base_url], max_retries=0, max_concurrency=2), "m")
        requests = [Request(key=str(i), sampling=Sampling(), seed=i, messages=[{"role": "user", "content": "x"}])
                    for i in range(6)]
        results = engine.generate(requests)
    assert len(results) == 6 and all(not r.ok and r.retryable for r in results)


def test_a_members_engine_block_overrides_the_recipes_field_by_field():
    from rlaif.recipe.spec import Recipe

    recipe = Recipe.model_validate({
        "name": "r", "engine": {"dtype": "bfloat16", "max_model_len": 4096, "gpu_memory_utilization": 0.9},
        "generators": [{"name": "g", "model": "m", "engine": {"tensor_parallel_size": 2, "replicas": "auto"}},
                       {"name": "h", "model": "m"}],
        "judge": {"name": "j", "model": "big", "engine": {"tensor_parallel_size": 4, "max_model_len": 8192}}})
    g = recipe.generators[0].engine_spec(recipe.engine).settings
    assert (g.dtype, g.max_model_len, g.tensor_parallel_size, g.replicas, g.gpus) == ("bfloat16", 4096, 2, "auto", 2)
    h = recipe.generators[1].engine_spec(recipe.engine).settings
    assert h == recipe.engine and h.gpus == 1
    j = recipe.judges[0].engine_spec(recipe.engine).settings
    assert (j.dtype, j.max_model_len, j.gpus) == ("bfloat16", 8192, 4)
    # placement is not part of an engine's identity: one load serves members that differ only there
    assert recipe.generators[0].engine_spec(recipe.engine).key == recipe.generators[0].model_copy(
        update={"engine": EngineSettings(tensor_parallel_size=2)}).engine_spec(recipe.engine).key


def test_zephyr_recipes_place_members_and_judge_on_one_8_gpu_node():
    """4 members of 1 GPU each and a 72B judge over 4: all five at once on 8 GPUs."""
    from rlaif.recipe.spec import load_recipe

    for name in ("sft", "dpo", "rounds"):
        recipe = load_recipe(ROOT / "recipes" / "zephyr-7b-beta" / f"{name}.yaml")
        gpus = [g.engine_spec(recipe.engine).settings.gpus for g in recipe.generators]
        judge = recipe.judge_spec().engine_spec(recipe.engine).settings
        assert gpus == [1, 1, 1, 1] and judge.gpus == 4 and sum(gpus) + judge.gpus == 8


def test_zephyr_rounds_policy_is_one_engine_of_auto_replicas(tmp_path):
    """A later round's policy: its 4 samples one engine (one pool of actors on Ray, as many copies of
    1 GPU as the 4-GPU judge leaves), the same engine its held-out answers use."""
    from rlaif.flows.rounds import held_out_recipe, round_recipe
    from rlaif.recipe.spec import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "zephyr-7b-beta" / "rounds.yaml")
    second = round_recipe(recipe, tmp_path, 2)
    specs = [g.engine_spec(second.engine) for g in second.generators]
    assert len(specs) == 4 and len({s.key for s in specs}) == 1
    spec = specs[0]
    assert (spec.settings.gpus, spec.settings.replicas, spec.settings.dtype) == (1, "auto", "bfloat16")
    held = held_out_recipe(recipe, "round-1", str(tmp_path / "dpo"))
    assert held.generators[0].engine_spec(held.engine).key == spec.key
