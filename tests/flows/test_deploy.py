"""Scheduled refresh on a real Prefect server on 127.0.0.1: deploy, serve, trigger twice.

`prefect server start` runs with its own home and SQLite database; `rlaif deploy` registers the
deployment with a cron schedule; `rlaif serve` runs in a subprocess; flow runs are created through
the server's API, and generate and judge through the session's vLLM server (`rlaif serve-model`).
The prompt file grows between the two runs: the second generates and judges only the new prompt,
writes version 0002, and leaves version 0001 as it was; a third, with no new prompt, computes
nothing and writes no version.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.helpers import ROOT, free_port, stop_group, write_prompts
from tests.flows.test_flows import TINY, stamps

pytestmark = pytest.mark.engine
CRON = "0 3 * * *"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server; yields the environment that points a client at it."""
    tmp = tmp_path_factory.mktemp("prefect_server")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp}/prefect.db",
           "PYTHONPATH": str(ROOT), "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PREFECT_LOGGING_LEVEL": "INFO"}
    env.pop("PREFECT_API_URL", None)
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
            assert time.time() < deadline, "Prefect server did not come up"
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield {**env, "PREFECT_API_URL": url}
    finally:
        stop_group(proc)


def rlaif(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlaif", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def trigger(env, name: str):
    """Create a flow run through the server's API and wait for it to finish."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return run_deployment(name, timeout=600, poll_interval=2)


def test_deploy_serve_and_three_scheduled_refreshes(server, tmp_path, vllm_server):
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, ["Name a fruit that is red.", "What is 2 + 2?"])
    recipe = tmp_path / "refresh.yaml"
    # members and judge through the session's vLLM server: each refresh is a flow run in a process of
    # its own, which would otherwise load SmolLM2 again (a minute a refresh on 2 cores)
    served = {"base_url": vllm_server}
    recipe.write_text(yaml.safe_dump({
        **TINY, "name": "tiny-refresh", "prompts": {"source": str(prompts)},
        "generators": [{**g, "endpoint": served} for g in TINY["generators"]],
        "judge": {**TINY["judge"], "endpoint": served}}))
    out = tmp_path / "run"

    done = rlaif(server, "deploy", str(recipe), "--cron", CRON, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("rlaif-refresh/tiny-refresh")
    assert [s.schedule.cron for s in dep.schedules] == [CRON]
    assert dep.parameters["out"] == str(out) and dep.parameters["recipe_path"] == str(recipe)

    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen([sys.executable, "-m", "rlaif", "serve"], cwd=ROOT, env=server, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run1 = trigger(server, "rlaif-refresh/tiny-refresh")
        assert run1.state.is_completed(), (tmp_path / "serve.log").read_text()[-5000:]
        v1 = out / "versions" / "0001"
        m1 = json.loads((v1 / "manifest.json").read_text())
        assert m1["counts"]["prompts"] == 2 and (v1 / "README.md").exists() and (v1 / "dataset_dict.json").exists()
        assert (out / "dataset").resolve() == v1
        first = stamps(out, "versions/0001/**/*")
        shards = stamps(out, "completions/shard-*.jsonl")
        assert len(shards) == 2  # one shard per generator

        write_prompts(prompts, ["Name a fruit that is red.", "What is 2 + 2?", "Give a synonym for quick."])
        run2 = trigger(server, "rlaif-refresh/tiny-refresh")
        assert run2.state.is_completed(), (tmp_path / "serve.log").read_text()[-5000:]
        second = json.loads((out / "refresh_summary.json").read_text())
        after2 = stamps(out, "versions/**/*") | stamps(out, "completions/shard-*.jsonl")

        run3 = trigger(server, "rlaif-refresh/tiny-refresh")  # no new prompts: nothing to do, no version
        assert run3.state.is_completed(), (tmp_path / "serve.log").read_text()[-5000:]
        third = {r["stage"]: r for r in json.loads((out / "refresh_summary.json").read_text())}
    finally:
        stop_group(serve)
    assert third["prompts"]["notes"]["new"] == 0 and third["generate"]["notes"]["shards generated"] == 0
    assert third["binarize"]["notes"]["new version"] is False and third["binarize"]["notes"]["version"] == "0002"
    assert stamps(out, "versions/**/*") | stamps(out, "completions/shard-*.jsonl") == after2
    assert not (out / "versions" / "0003").exists() and (out / "dataset").resolve() == out / "versions" / "0002"

    m2 = json.loads((out / "versions" / "0002" / "manifest.json").read_text())
    assert m2["counts"]["prompts"] == 3 and (out / "dataset").resolve() == out / "versions" / "0002"
    assert m2["counts"]["pairs"] + sum(m2["counts"]["prompts_skipped"].values()) == 3
    refresh = {r["stage"]: r for r in second}
    assert refresh["prompts"]["notes"]["new"] == 1 and refresh["generate"]["notes"]["shards generated"] == 2
    assert refresh["binarize"]["notes"]["new version"] is True
    assert stamps(out, "versions/0001/**/*") == first  # the previous version untouched
    after = stamps(out, "completions/shard-*.jsonl")
    assert {k: after[k] for k in shards} == shards and len(after) == 4  # only the new prompt generated
    new_batch = [json.loads(line)["prompt_id"] for line in (out / "refresh" / "shard-0002.jsonl").read_text().splitlines()]
    assert new_batch == ["p2"]


def test_a_judge_change_before_the_third_scheduled_refresh_blocks_its_version(server, tmp_path):
    """Three scheduled refreshes through the server, members and judge on the strict OpenAI server:
    runs 1-2 publish, and a judge whose snapshot changed before run 3 (it now prefers the other
    member) is caught on the sentinels: run 3 fails with its drift, publishes nothing, and leaves
    the drift table as an artifact of the flow run; `rlaif refresh` then exits 5."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from rlaif.rehearsal import fault_cases as cases
    from tests.judges.test_drift import SNAPSHOT, biased, prompts_file

    env = {**server, "FAULT_KEY": cases.KEY}
    with cases.server() as srv:
        recipe = cases.write_recipe(tmp_path, srv, judge__sentinels=2, name="drift-refresh")
        out = tmp_path / "run"
        prompts_file(tmp_path, 4)
        done = rlaif(env, "deploy", str(recipe), "--cron", CRON, "--out", str(out))
        assert done.returncode == 0, done.stderr[-3000:]
        log = (tmp_path / "serve.log").open("w")
        serve = subprocess.Popen([sys.executable, "-m", "rlaif", "serve", "drift-refresh"], cwd=ROOT, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            runs = []
            for n in (4, 5, 6):
                prompts_file(tmp_path, n)
                if n == 6:  # the judge's endpoint now serves another snapshot under the same name
                    srv.snapshots, srv.fingerprint, srv.responder = {cases.JUDGE: SNAPSHOT}, "fp_new", biased
                runs.append(trigger(server, "rlaif-refresh/drift-refresh"))
        finally:
            stop_group(serve)
        again = rlaif(env, "refresh", str(recipe), "--out", str(out))

    assert runs[0].state.is_completed() and runs[1].state.is_completed(), (tmp_path / "serve.log").read_text()[-5000:]
    assert runs[2].state.is_failed(), (tmp_path / "serve.log").read_text()[-5000:]
    assert "JudgeDrifted" in runs[2].state.message and "2 of 2 sentinel preferences flipped" in runs[2].state.message
    assert sorted(p.name for p in (out / "versions").iterdir()) == ["0001", "0002"]
    assert (out / "dataset").resolve() == out / "versions" / "0002"
    history = json.loads((out / "sentinels" / "uf" / "history.json").read_text())
    assert [(c["number"], c["version"]) for c in history] == [(1, 1), (2, 2), (3, None)]
    assert history[1]["drift"]["flipped"] == 0 and history[2]["drift"]["flip_rate"] == 1.0

    with temporary_settings({PREFECT_API_URL: server["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sentinels-uf"])))
    tables = {a.flow_run_id: json.loads(a.data) if isinstance(a.data, str) else a.data for a in found}
    assert set(tables) == {r.id for r in runs}  # one table per run that judged its sentinels
    last = tables[runs[2].id]
    assert [row["check"] for row in last] == [1, 2, 3] and last[2]["flip_rate"] == 1.0

    assert again.returncode == 5, again.stderr[-3000:]  # the same refresh by hand: the documented exit code
    assert sum(x.startswith("error:") for x in again.stderr.splitlines()) == 1
    assert sorted(p.name for p in (out / "versions").iterdir()) == ["0001", "0002"]
