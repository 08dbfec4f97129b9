"""The preflight: configuration mistakes found before any compute and before Prefect starts, one
line each, exit code 2, all of them at once; and every bad prompt file shape named by file, line
and field through the command line.

"Before Prefect starts" is seen in the run directory: a flow that ran leaves `.prefect/` (its
results) and `prompts/` (the prompts stage); a preflight that stops the command leaves neither.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.support.helpers import SMOL
from tests.support.faulty import Faulty, error_lines, recipe
from rlaif.core.errors import ConfigError
from rlaif.cli.main import main
from rlaif.recipe.preflight import preflight
from rlaif.recipe.spec import load_recipe


@pytest.fixture
def url():
    Faulty.reset()
    with Faulty.serving() as u:
        yield u


def nothing_ran(out) -> bool:
    return not (out / ".prefect").exists() and not (out / "prompts").exists() and Faulty.seen == []


# ----------------------------------------------------------------------------- models, endpoints, keys
def test_every_problem_is_named_at_once_before_anything_runs(url, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    (tmp_path / "no-config").mkdir()
    dead = "http://127.0.0.1:1/v1"  # nothing listens there
    path = recipe(tmp_path, url)
    data = yaml.safe_load(path.read_text())
    data["generators"] += [
        {"name": "nowhere", "model": "no-such-model-anywhere"},
        {"name": "no-config", "model": str(tmp_path / "no-config")},
        {"name": "dead", "model": "gen-a", "endpoint": {"base_url": dead}},
        {"name": "keyless", "model": "gen-a", "endpoint": {"base_url": url, "api_key_env": "NO_SUCH_KEY"}},
        {"name": "unlisted", "model": "gen-z", "endpoint": {"base_url": url + "/"}},
    ]
    data["binarize"]["push_to_hub"] = "me/prefs"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 2
    lines = error_lines(capsys.readouterr().err)
    expected = [
        "generator 'nowhere': model 'no-such-model-anywhere': not a bundled model",
        f"generator 'no-config': model directory {tmp_path / 'no-config'} has no config.json",
        f"endpoint {dead} does not answer (",
        "environment variable NO_SUCH_KEY (the endpoint's api_key_env for",
        f"{url}/ does not serve model 'gen-z' (it serves: gen-a, gen-b, judge)",
        "binarize.push_to_hub: set HF_TOKEN",
    ]
    for text in expected:
        assert sum(text in line for line in lines) == 1, (text, lines)
    assert len(lines) == len(expected)
    assert nothing_ran(out)


def test_a_model_found_nowhere_says_whether_a_hub_was_reachable(tmp_path):
    from rlaif.engines.models import check_model

    with pytest.raises(ConfigError) as e:
        check_model("no-such-org/no-such-model-xyz", timeout=3)
    message = str(e.value)
    assert message.startswith("model 'no-such-org/no-such-model-xyz': not a bundled model (gemma3-270m, "
                              "smollm2-135m-instruct) nor a local directory, and ")
    assert "cannot reach the Hugging Face Hub" in message or "no such model on the Hub" in message


@pytest.mark.parametrize("status, problem", [
    (401, "rejected a request without a key (set api_key_env): HTTP 401: Incorrect API key provided"),
    (403, "rejected a request without a key (set api_key_env): HTTP 403: forbidden"),
])
def test_an_endpoint_that_rejects_the_key_is_found_before_compute(url, tmp_path, capsys, status, problem):
    Faulty.models_status = status
    out = tmp_path / "run"
    assert main(["generate", str(recipe(tmp_path, url)), "--out", str(out)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"{url} {problem}" in line and nothing_ran(out)


def test_a_busy_endpoint_passes_the_preflight(url, tmp_path):
    Faulty.models_status = 503  # the stage's own retries deal with it
    preflight(load_recipe(recipe(tmp_path, url)), tmp_path / "run", {"generate", "judge", "binarize"})


# ----------------------------------------------------------------------------- prompts
def test_prompts_too_long_for_a_local_model_are_listed_with_its_limit(tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    long = "Tell me everything about " + "rivers and mountains " * 100
    source.write_text("".join(json.dumps({"prompt_id": pid, "prompt": text}) + "\n"
                              for pid, text in [("short", "Hi."), ("long-1", long), ("long-2", long + "and seas")]))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "long", "prompts": {"source": str(source)}, "hygiene": {"near_dup_threshold": None},
        "generators": [{"name": "smol", "model": SMOL, "system_prompt": "Be brief."}],
        "judge": {"name": "uf", "model": SMOL}, "engine": {"max_model_len": 256}}))
    out = tmp_path / "run"
    assert main(["generate", str(path), "--out", str(out)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"generator 'smol': 2 prompts too long for {SMOL} (a context of 256 tokens): long-1 (" in line
    assert "long-2 (" in line and "short (" not in line and "raise max_model_len" in line
    assert nothing_ran(out)
    # the count is the engine's: the chat template and the system prompt included
    from transformers import AutoTokenizer

    from rlaif.engines.models import resolve_model
    from rlaif.generation.ensemble import request
    from rlaif.prompts.prompt_sets import load_prompts
    from rlaif.engines.vllm_offline import token_ids

    spec = load_recipe(path).generators[0]
    n = len(token_ids(AutoTokenizer.from_pretrained(resolve_model(SMOL)), request(spec, load_prompts(str(source))[1])))
    assert f"long-1 ({n} tokens)" in line


BAD_FILES = [
    (b'{"prompt": "caf\xe9"}\n', "line 1: not UTF-8 (byte 0xe9 at column 16); save the file as UTF-8"),
    (b'{"prompt": "fine"}\nnot json\n', "line 2: not valid JSON"),
    (b'["a", "list"]\n', "line 1: each row must be a JSON object"),
    (b'{"id": "x", "text": "hello"}\n', "line 1, field 'prompt': missing"),
    (b'{"prompt": "   "}\n', "line 1, field 'prompt': is empty"),
    (b'{"prompt": 3}\n', "line 1, field 'prompt': must be a string, got int"),
    (b'{"messages": []}\n', "line 1, field 'messages': must be a non-empty list"),
    (b'{"messages": [{"role": "user"}]}\n', "line 1, field 'messages': content: Field required"),
    (b'{"messages": [{"role": "system", "content": "Be kind."}]}\n', "line 1, field 'messages': must end with a user turn"),
    (b'{"messages": [{"role": "user", "content": " "}]}\n', "line 1, field 'messages': the last user turn is empty"),
    (b'{"prompt_id": "a", "prompt": "x"}\n{"prompt_id": "b", "prompt": "y"}\n{"prompt_id": "a", "prompt": "z"}\n',
     "line 3, field 'prompt_id': duplicate id 'a' (first on line 1)"),
    (b"\n\n", None),  # the file says it, not a line
]


@pytest.mark.parametrize("content, problem", BAD_FILES, ids=[(p or "empty").split(": ", 1)[-1][:30] for _, p in BAD_FILES])
def test_each_bad_prompt_file_shape_is_one_line_naming_file_and_line(url, tmp_path, capsys, content, problem):
    source = tmp_path / "prompts.jsonl"
    source.write_bytes(content)
    out = tmp_path / "run"
    assert main(["run", str(recipe(tmp_path, url)), "--out", str(out)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    expected = f"error: {source}, {problem}" if problem else f"error: {source}: no prompts in file"
    assert line.startswith(expected) and nothing_ran(out)


@pytest.mark.parametrize("name, problem", [
    ("missing.jsonl", "missing.jsonl: file not found"),
    ("folder", "folder: is a directory but not a saved dataset"),
    ("prompts.txt", "prompts.txt: unknown prompt source"),
])
def test_a_prompt_source_that_is_not_a_prompt_file_is_one_line(url, tmp_path, capsys, name, problem):
    (tmp_path / "folder").mkdir()
    (tmp_path / "prompts.txt").write_text("hello\n")
    out = tmp_path / "run"
    assert main(["generate", str(recipe(tmp_path, url)), "--out", str(out), "--set",
                 f"prompts.source={tmp_path / name}"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert problem in line and nothing_ran(out)


# ----------------------------------------------------------------------------- training
def test_training_mistakes_are_found_before_generating(url, tmp_path, capsys):
    path = recipe(tmp_path, url, train__sft={"model": "gemma3-270m", "lr_scheduler_type": "sideways"},
                  train__dpo={"dataset": str(tmp_path / "nowhere")})
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 2
    lines = error_lines(capsys.readouterr().err)
    expected = ["train.sft.model gemma3-270m: the tokenizer has no chat template",
                "train.sft: TRL's SFTConfig rejected the settings: sideways is not a valid SchedulerType",
                f"train.dpo.dataset {tmp_path / 'nowhere'}: no such directory"]
    assert len(lines) == 3 and all(any(text in line for line in lines) for text in expected), lines
    assert nothing_ran(out)


def test_dpo_alone_without_a_sft_model_says_what_to_run_first(url, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "dpo", str(recipe(tmp_path, url, train__dpo={"beta": 0.1})), "--out", str(out)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "train.dpo.model is unset, so dDPO starts from this run's dSFT model" in line
    assert "run `rlaif train sft` first" in line


def test_a_cached_hub_model_is_checked_with_the_recipe_wide_engine_defaults(tmp_path, monkeypatch, smollm2_dir):
    """A member given as a hub id in the local Hugging Face cache, with an `engine:` block of its own
    that does not set max_model_len (the Zephyr recipe's `{replicas: auto}`): its context is the
    recipe's `engine.max_model_len`, and its config and tokenizer are read from the cache's
    snapshot, not from `<hub id>/config.json` as a path."""
    from huggingface_hub import constants

    from rlaif.rehearsal.standins import add_model

    add_model(tmp_path / "hf", "mistralai/Mistral-7B-Instruct-v0.2", smollm2_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt_id": "long", "prompt": "word " * 80}) + "\n"
                       + json.dumps({"prompt_id": "short", "prompt": "Hi"}) + "\n")
    recipe = load_recipe(_write(tmp_path / "r.yaml", {
        "name": "hub", "prompts": {"source": str(prompts)}, "hygiene": {"eval_prompts": None},
        "generators": [{"name": "m", "model": "mistralai/Mistral-7B-Instruct-v0.2", "engine": {"replicas": "auto"}}],
        "judge": {"name": "j", "model": SMOL}, "engine": {"max_model_len": 64}}))
    with pytest.raises(ConfigError) as e:
        preflight(recipe, tmp_path / "run", {"generate"})
    (line,) = str(e.value).splitlines()
    assert line.startswith("generator 'm': 1 prompts too long for mistralai/Mistral-7B-Instruct-v0.2 (a context of 64 "
                           "tokens): long (")
    # without a max_model_len anywhere, the context is the cached config's (8192): nothing is too long
    preflight(load_recipe(tmp_path / "r.yaml", ["engine.max_model_len=null"]), tmp_path / "run", {"generate"})


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path
