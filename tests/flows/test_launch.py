"""No fixed cost per command: an unchanged rerun answers from the shards alone (no Prefect server,
no engine, no ML library imported); work to do runs the flow, showing each line once; a long-lived
`rlaif server` is used by every command while it runs, and stops.

The commands run as real subprocesses (their imports and Prefect's servers are what is tested),
with generation and judging through a local OpenAI-compatible endpoint, so no model is loaded;
the preloaded-engine path runs in-process on the session's SmolLM2 engine.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.endpoints import asked, judging, said, serving, verdict
from tests.support.helpers import ROOT, SMOL, SMOL_SETTINGS, write_prompts
from tests.flows.test_flows import TINY, stamps

HEAVY = ("vllm", "torch", "transformers", "datasets", "trl", "matplotlib", "sklearn")
TEMPORARY = "starting Prefect's temporary server"  # the log line of a command that starts one


def served(body):
    """Answers generation with the model's name; a judge request (it has a response_format) gets
    a rating: 5 for gen-a's answers, 3 for the others."""
    if judging(body):
        return verdict(5 if "from gen-a" in asked(body) else 3)
    return said(f"ok from {body['model']}")


@pytest.fixture
def endpoint_recipe(tmp_path):
    with serving(served, models=("gen-a", "gen-b", "served-judge")) as srv:
        url = srv.base_url
        write_prompts(tmp_path / "prompts.jsonl", ["Say hi.", "Name a colour."])
        data = {**TINY, "prompts": {"source": str(tmp_path / "prompts.jsonl")},
                "generators": [{"name": m, "model": m, "sampling": {"max_tokens": 8},
                                "endpoint": {"base_url": url, "max_retries": 0}} for m in ("gen-a", "gen-b")],
                "judge": {"name": "uf", "model": "served-judge", "aspects": ["helpfulness"],
                          "endpoint": {"base_url": url, "max_retries": 0}}}
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(data))
        yield tmp_path / "recipe.yaml"


def environment(tmp_path, **extra) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "RLAIF_HOME": str(tmp_path / "rlaif-home"),
           "PYTHONPATH": str(ROOT), "PREFECT_LOGGING_LEVEL": "INFO", **extra}  # "Beginning flow run" logged
    env.pop("PREFECT_API_URL", None)
    return env


# a command, then which heavy libraries it imported, as its last line on stdout
CLI = ("import sys; from rlaif.cli.main import main; rc = main(sys.argv[1:]); "
       f"print(sorted(m for m in {HEAVY!r} if m in sys.modules)); sys.exit(rc)")


def rlaif(env, *args) -> tuple[str, list[str], str]:
    """Run a command; returns its terminal output, the heavy libraries it imported, and its log."""
    proc = subprocess.run([sys.executable, "-c", CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logs = sorted(Path(args[args.index("--out") + 1]).glob("logs/*.log"))  # an absolute --out
    return proc.stderr, eval(proc.stdout.strip().splitlines()[-1]), logs[-1].read_text()


def test_an_unchanged_rerun_starts_nothing_and_new_work_runs_the_flow(tmp_path, endpoint_recipe):
    env = environment(tmp_path, RLAIF_USE_SERVER="0")
    out = str(tmp_path / "run")
    _, _, log = rlaif(env, "run", str(endpoint_recipe), "--out", out)
    assert TEMPORARY in log  # a first run starts Prefect's temporary server
    before = stamps(tmp_path / "run", "**/shard-*.jsonl") | stamps(tmp_path / "run", "versions/**/*")

    terminal, heavy, log = rlaif(env, "run", str(endpoint_recipe), "--out", out)
    assert heavy == [] and TEMPORARY not in log and "Beginning flow run" not in log
    assert stamps(tmp_path / "run", "**/shard-*.jsonl") | stamps(tmp_path / "run", "versions/**/*") == before
    summary = {r["stage"]: r for r in json.loads((tmp_path / "run" / "summary.json").read_text())}
    assert all(summary[s]["cached"] for s in ("generate", "judge", "binarize"))
    assert terminal.count("gen-a: 1 of 1 shards already done") == 1 and "rlaif: " in terminal

    # a judge setting changed: the flow runs, after an attempt that found judging to do; the
    # attempt's lines are not shown twice
    terminal, _, log = rlaif(env, "run", str(endpoint_recipe), "--out", out, "--set", "judge.sampling.max_tokens=48")
    assert TEMPORARY in log and "Beginning flow run" in log
    assert terminal.count("gen-a: 1 of 1 shards already done") == 1 and terminal.count("generate ─") == 1
    assert (tmp_path / "run" / "dataset").resolve().name == "0002"


def test_a_long_lived_server_is_used_by_commands_until_stopped(tmp_path, endpoint_recipe):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = environment(tmp_path)
    server = lambda action: subprocess.run([sys.executable, "-m", "rlaif", "server", action], cwd=ROOT,  # noqa: E731
                                           env=env, capture_output=True, text=True, timeout=180)
    assert server("status").returncode == 1
    started = server("start")
    try:
        assert started.returncode == 0, started.stderr
        state = json.loads((tmp_path / "rlaif-home" / "prefect-server" / "server.json").read_text())
        assert state["url"] in started.stderr and state["url"].startswith("http://127.0.0.1:")
        assert server("status").returncode == 0
        assert "already running" in server("start").stderr  # one server, not two

        _, _, log = rlaif(env, "generate", str(endpoint_recipe), "--out", str(tmp_path / "run"))
        assert TEMPORARY not in log and state["url"] in log
        with temporary_settings({PREFECT_API_URL: state["url"]}), get_client(sync_client=True) as client:
            runs = client.read_flow_runs()
        assert [(r.flow_id is not None, r.state_name) for r in runs] == [(True, "Completed")]
    finally:
        stopped = server("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stderr
    assert server("status").returncode == 1
    with pytest.raises(ProcessLookupError):
        os.kill(state["pid"], 0)


def test_the_engine_preloaded_is_the_one_the_pending_stage_uses_first(tmp_path):
    """Planning only: no engine is loaded. Members on two models with the judge on one of them: the
    other model goes first (the judge's is used last, so judging finds it loaded)."""
    from rlaif.engines.pool import EnginePool, EngineSpec
    from rlaif.runners.context import using
    from rlaif.flows.launch import first_engine, without_prefect
    from rlaif.flows.pipeline import Pending, pipeline_flow
    from rlaif.recipe.spec import load_recipe

    write_prompts(tmp_path / "prompts.jsonl", ["Name a fruit that is red."])
    gemma = {"name": "gemma", "model": "gemma3-270m", "format": "urial"}
    for generators, first in ((TINY["generators"], SMOL), ([TINY["generators"][0], gemma], "gemma3-270m")):
        data = {**TINY, "prompts": {"source": str(tmp_path / "prompts.jsonl")}, "generators": generators}
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(data))
        recipe = load_recipe(tmp_path / "recipe.yaml")
        with pytest.raises(Pending) as pending:
            without_prefect(pipeline_flow, recipe, str(tmp_path / "run"))
        assert pending.value.step.name == "generate"
        with EnginePool() as pool, using(pool=pool):
            assert first_engine(pending.value, recipe, str(tmp_path / "run")) == EngineSpec(first, None, SMOL_SETTINGS)
            assert pool.loads == {}


@pytest.mark.engine
def test_members_with_different_sampling_and_the_judge_share_one_engine(tmp_path, pool, prefect_harness):
    """`rlaif run` in-process on the tiny recipe: two members on SmolLM2 with different sampling, the
    judge on SmolLM2 too. The pool holds the session's engine under the recipe's settings and counts
    every load: all three use that one engine through generation and judging, so nothing is loaded."""
    from rlaif.cli.main import main
    from rlaif.runners.context import using

    write_prompts(tmp_path / "prompts.jsonl", ["Name a fruit that is red."])
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({**TINY, "prompts": {"source": str(tmp_path / "prompts.jsonl")}}))
    with using(pool=pool):
        assert main(["run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "run")]) == 0
    assert pool.loads == {}
    summary = {r["stage"]: r for r in json.loads((tmp_path / "run" / "summary.json").read_text())}
    assert summary["generate"]["count_out"] == 2 and not summary["generate"]["cached"]
    assert summary["judge"]["count_in"] == 2 and not summary["judge"]["cached"]
