"""Every shipped recipe rehearsed: the commands its README (or its page in docs/) gives, unchanged,
run as a user who downloaded its models and datasets would run them, on this CPU.

The user's Hugging Face cache holds a tiny stand-in of each model and a few rows of each dataset
under the real ids (tests/hub_cache.py; HF_HUB_OFFLINE=1); every hosted endpoint is the strict
local OpenAI server. Appended to each command are only what a CPU needs (rlaif/rehearsal/overrides.py:
prompt count, dtype, one device, steps, lengths) and, for `accelerate launch`, two CPU processes over
gloo instead of the README's DeepSpeed ZeRO-3 config. A recipe added to recipes/ gets a test here.
(The quickstart's README command, `rlaif run recipes/quickstart.yaml`, is tests/test_e2e.py.)

`rlaif rehearse` itself: a user recipe written from docs/recipes.md runs; planted mistakes (a misspelled
model, a dataset without the named split, an unset key variable, a training field TRL rejects)
end it with their one-line error before any engine loads.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.helpers import ROOT, free_port
from tests.flows.test_cluster import two_nodes
from rlaif.rehearsal.openai_server import OpenAIServer

pytestmark = pytest.mark.engine
RECIPES = ROOT / "recipes"
PROMPTS = 4


@pytest.fixture(scope="module")
def user_cache(tmp_path_factory) -> Path:
    from rlaif.rehearsal.hub_cache import fill

    root = tmp_path_factory.mktemp("user-hf")
    return fill(root / "huggingface", root / "tiny")


@pytest.fixture(scope="module")
def hosted():
    """The strict local OpenAI server, serving the shipped recipes' hosted models."""
    with OpenAIServer(models=["gpt-4-0613", "gpt-4o-2024-08-06", "o4-mini"], reasoning_models=["o4-mini"],
                      api_key="sk-user-key") as server:
        yield server


def user_env(cache: Path, prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_CPU_KVCACHE_SPACE", "OPENAI_API_KEY")}
    return {**env, "HF_HOME": str(cache), "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(prefect_home),
            "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "120",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}


def readme_commands(readme: Path) -> list[str]:
    """The shell lines of the README's first ```bash block: continuations joined, comments dropped."""
    block = re.search(r"```bash\n(.*?)```", readme.read_text(), re.S).group(1)
    lines, current = [], ""
    for raw in block.splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return lines


def on_cpu(line: str, variables: dict[str, str], base_url: str) -> list[str]:
    """A README command as it runs here: its words unchanged, then what a CPU needs."""
    from rlaif.recipe.spec import load_recipe
    from rlaif.rehearsal.overrides import cpu_overrides

    words = [variables.get(w[1:], w) if w.startswith("$") else w for w in shlex.split(line)]
    words = [re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], w) for w in words]
    if words[:2] == ["accelerate", "launch"]:  # ZeRO-3 on 8 GPUs -> 2 CPU processes over gloo
        i = words.index("--config_file")
        del words[i:i + 2]
        words = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                 "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), *words[2:]]
    elif words[0] == "rlaif":
        words = [sys.executable, "-m", "rlaif", *words[1:]]
    rest = words[words.index("rlaif") + 1:]
    if rest[0] in ("run", "train"):
        recipe_path = next(w for w in rest[1:] if w.endswith(".yaml"))
        given = [rest[i + 1] for i, w in enumerate(rest) if w == "--set"]
        recipe = load_recipe(recipe_path, given)
        sets, _ = cpu_overrides(recipe, PROMPTS, base_url, {"data", "sft", "dpo"})
        words += [a for s in sets for a in ("--set", s)]
    elif rest[0] == "evaluate" and "--mt-bench" in rest:
        words += ["--limit", "1", "--max-tokens", "16"]
    return words


def run_readme(readme: Path, cwd: Path, env: dict, base_url: str) -> list[subprocess.CompletedProcess]:
    """Each command of the README in order, as a shell would; every one must exit 0."""
    variables, done = {}, []
    for line in readme_commands(readme):
        if m := re.fullmatch(r"(?:export )?(\w+)=(\S+)", line):
            variables[m.group(1)] = m.group(2)
            if line.startswith("export"):
                env[m.group(1)] = "sk-user-key"  # the README's `...`: the user's key, which the server knows
            continue
        cmd = on_cpu(line, variables, base_url)
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{line}\n-> exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        done.append(proc)
    return done


def user_dir(tmp_path: Path) -> Path:
    """A user's working directory: the repository's recipes/ under it, runs/ written there."""
    (tmp_path / "recipes").symlink_to(RECIPES)
    return tmp_path


def test_zephyr_chain_as_its_readme_says(tmp_path, user_cache, hosted, prefect_home):
    """recipes/zephyr-7b-beta/README.md: data (4 members, the 72B judge), dSFT of the base model on
    UltraChat and dDPO under `accelerate launch`, MT-Bench graded by GPT-4 through the hosted API."""
    cwd = user_dir(tmp_path)
    env = user_env(user_cache, prefect_home)
    procs = run_readme(RECIPES / "zephyr-7b-beta" / "README.md", cwd, env, hosted.base_url)
    assert len(procs) == 4
    run = cwd / "runs" / "zephyr-7b-beta"
    stages = {r["stage"]: r for r in json.loads((run / "summary.json").read_text())}
    assert stages["generate"]["notes"]["per_model"] == {m: PROMPTS for m in (
        "mistral-7b-instruct", "llama-3.1-8b-instruct", "qwen2.5-7b-instruct", "gemma-2-9b-it")}
    sft = json.loads((run / "sft" / "rlaif-stage.json").read_text())
    dpo = json.loads((run / "dpo" / "rlaif-stage.json").read_text())
    assert sft["start_model"] == "mistralai/Mistral-7B-v0.1" and sft["processes"] == 2
    assert dpo["start_model"] == str(run / "sft") and dpo["processes"] == 2
    scores = json.loads((run / "eval" / "mt_bench" / "scores.gpt-4.json").read_text())
    assert {m["label"] if isinstance(m, dict) else m for m in scores["models"]} >= {"base", "dsft", "ddpo"}
    graded = [r for r in hosted.requests if r["path"].endswith("/chat/completions")]
    assert graded and all(r["status"] == 200 for r in graded)  # the API's rules held for every grading


def test_ultrafeedback_gpt4o_as_its_readme_says(tmp_path, user_cache, hosted, prefect_home):
    """docs/judges.md "Judging with a hosted API": the bill first (--dry-run), then the run, its GPT-4o
    judge through the Batch API of the strict server."""
    cwd = user_dir(tmp_path)
    env = user_env(user_cache, prefect_home)
    section = (ROOT / "docs" / "judges.md").read_text().split("## Judging with a hosted API")[1]
    readme = tmp_path / "section.md"
    readme.write_text(section)
    lines = readme_commands(readme)
    assert lines == ["rlaif run recipes/ultrafeedback-gpt4o.yaml --dry-run",
                     "OPENAI_API_KEY=sk-... rlaif run recipes/ultrafeedback-gpt4o.yaml"]
    dry = subprocess.run(on_cpu(lines[0], {}, hosted.base_url), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "total (rlaif run)" in dry.stdout + dry.stderr, dry.stderr[-2000:]
    words = lines[1].split(" ", 1)[1]
    proc = subprocess.run(on_cpu(words, {}, hosted.base_url), cwd=cwd, env={**env, "OPENAI_API_KEY": "sk-user-key"},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = cwd / "runs" / "ultrafeedback-gpt4o"
    stages = {r["stage"]: r for r in json.loads((run / "summary.json").read_text())}
    assert len(stages["generate"]["notes"]["per_model"]) == 4
    assert stages["judge"]["notes"]["failed"] == 0
    assert any(r["path"].endswith("/batches") and r["method"] == "POST" for r in hosted.requests)
    assert (run / "dataset" / "README.md").exists()


# ----------------------------------------------------------------------------- rlaif rehearse
def rehearse(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlaif", "rehearse", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


USER_RECIPE = {  # written from docs/recipes.md's fields: one hub member, a hosted judge, dSFT and dDPO
    "name": "my-prefs",
    "prompts": {"source": "hf:HuggingFaceH4/ultrafeedback_binarized", "split": "train_prefs"},
    "generators": [
        {"name": "qwen", "model": "Qwen/Qwen2.5-7B-Instruct", "sampling": {"max_tokens": 512}},
        {"name": "phi", "model": "microsoft/Phi-3.5-mini-instruct", "sampling": {"max_tokens": 512}},
    ],
    "judges": [{"name": "uf-gpt4o", "kind": "ultrafeedback", "model": "gpt-4o-2024-08-06", "mode": "joint",
                "endpoint": {"base_url": "https://api.openai.com/v1", "api_key_env": "MY_OPENAI_KEY",
                             "provider": "openai"}}],
    "binarize": {"test_fraction": 0.1},
    "train": {"sft": {"model": "mistralai/Mistral-7B-v0.1", "learning_rate": 2e-5, "max_length": 2048,
                      "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"},
              "dpo": {"beta": 0.05, "learning_rate": 5e-7, "per_device_train_batch_size": 8}},
    "engine": {"dtype": "bfloat16", "gpu_memory_utilization": 0.9, "tensor_parallel_size": 2},
}


def write_recipe(path: Path, **changes) -> Path:
    recipe = json.loads(json.dumps(USER_RECIPE))
    for dotted, value in changes.items():
        node = recipe
        *keys, last = dotted.split("__")
        for k in keys:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[last] = value
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("change, says", [
    ({"generators__0__model": "Qwen/Qwen2.5-7B-Instruc"}, "model 'Qwen/Qwen2.5-7B-Instruc'"),
    ({"prompts__split": "train"}, "has no split 'train'"),
    ({"judges__0__endpoint__api_key_env": "UNSET_KEY"}, "the key variable UNSET_KEY is not set"),
    ({"train__dpo__lr_scheduler_type": "sideways"}, "train.dpo: TRL's DPOConfig rejected the settings"),
])
def test_rehearse_fails_a_planted_mistake_with_one_line(tmp_path, user_cache, prefect_home, change, says):
    env = {**user_env(user_cache, prefect_home), "MY_OPENAI_KEY": "sk-mine"}
    recipe = write_recipe(tmp_path / "mine.yaml", **change)
    proc = rehearse([str(recipe), "--out", str(tmp_path / "run")], tmp_path, env)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not list((tmp_path / "run").glob("completions/*.jsonl"))  # nothing was generated


def test_rehearse_runs_a_user_recipe_end_to_end(tmp_path, user_cache, prefect_home):
    """The whole chain of a recipe written from the README: generate, judge (hosted, on the strict
    server), binarize, dSFT, dDPO, evaluate; what it swapped is said, and the user's key is never sent."""
    env = {**user_env(user_cache, prefect_home), "MY_OPENAI_KEY": "sk-mine-never-sent"}
    recipe = write_recipe(tmp_path / "mine.yaml")
    proc = rehearse([str(recipe), "--out", str(tmp_path / "run")], tmp_path, env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for said in ("swapped  model Qwen/Qwen2.5-7B-Instruct -> a tiny chat model",
                 "swapped  model mistralai/Mistral-7B-v0.1 -> a tiny base model",
                 "swapped  dataset hf:HuggingFaceH4/ultrafeedback_binarized",
                 "uf-gpt4o: https://api.openai.com/v1 -> the local strict server",
                 "checked  MY_OPENAI_KEY is set", "rehearsal passed"):
        assert said in out, out[-4000:]
    run = tmp_path / "run"
    assert json.loads((run / "dpo" / "rlaif-stage.json").read_text())["start_model"] == str(run / "sft")
    assert (run / "eval" / "metrics.json").exists()
    assert "sk-mine-never-sent" not in "".join(p.read_text(errors="replace") for p in run.rglob("*") if p.is_file())


@pytest.fixture
def user_cluster(user_cache, monkeypatch):
    """Two Ray nodes on 127.0.0.1 whose workers see the user's Hugging Face cache, as each machine of
    a real cluster has its own."""
    monkeypatch.setenv("HF_HOME", str(user_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    with two_nodes() as cluster:
        yield cluster


def test_zephyr_data_step_on_a_two_node_ray_cluster(tmp_path, user_cache, hosted, prefect_home, user_cluster):
    """Step 1 of the Zephyr README again, with `--ray` on a two-node cluster on 127.0.0.1: the four
    members and the judge run as vLLM engines inside Ray actors, and every row is there once."""
    address, nodes, pids = user_cluster
    cwd = user_dir(tmp_path)
    env = {k: v for k, v in user_env(user_cache, prefect_home).items() if k != "RAY_ADDRESS"}
    step = readme_commands(RECIPES / "zephyr-7b-beta" / "README.md")[2]
    assert step == "rlaif run $R/dpo.yaml --set train.dpo=null"
    cmd = on_cpu(step, {"R": "recipes/zephyr-7b-beta"}, hosted.base_url) + ["--ray", address]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    run = cwd / "runs" / "zephyr-7b-beta"
    workers = [json.loads(p.read_text()).get("worker") for d in ("completions", "judgements")
               for p in (run / d).rglob("shard-*.meta.json")]
    pids.update(int(w["pid"]) for w in workers if w)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    stages = {r["stage"]: r for r in json.loads((run / "summary.json").read_text())}
    assert stages["generate"]["count_out"] == 4 * PROMPTS and stages["judge"]["count_in"] == 4 * PROMPTS
    assert stages["generate"]["notes"]["ray"]
    assert workers and all(workers)  # every shard was made by a Ray worker
    assert {w["node"] for w in workers} <= set(nodes.values())
