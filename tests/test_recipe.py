import subprocess
import sys

import pytest

from conftest import ROOT
from flows.recipe import RecipeError, load_recipe

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def test_quickstart_recipe_validates():
    r = load_recipe(QUICKSTART)
    assert [g.format for g in r.generators] == ["chat", "urial"]
    assert r.judges[0].kind == "ultrafeedback" and r.binarize.score == "auto"
    assert r.train.dpo.beta == 0.1


def test_overrides_set_nested_fields():
    r = load_recipe(QUICKSTART, ["prompts.limit=3", "generators.1.sampling.max_tokens=16"])
    assert r.prompts.limit == 3 and r.generators[1].sampling.max_tokens == 16


def test_unknown_and_wrong_fields_are_named(tmp_path):
    text = QUICKSTART.read_text().replace("temperature: 0.0, max_tokens: 96", "temprature: 0.0, max_tokens: many")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_recipe(bad)
    msg = str(e.value)
    assert str(bad) in msg
    assert "field 'judges.0.sampling.temprature': unknown field" in msg
    assert "field 'judges.0.sampling.max_tokens'" in msg


def test_generator_names_must_be_unique():
    with pytest.raises(RecipeError, match="field 'generators': Value error, generator names must be unique"):
        load_recipe(QUICKSTART, ["generators.1.name=smollm2-135m"])


def test_cli_reports_a_bad_prompt_file_before_loading_models(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(QUICKSTART), "--out", str(tmp_path / "run"),
         "--set", f"prompts.source={prompts}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {prompts}, line 2, field 'prompt': is empty" in proc.stderr
    assert not (tmp_path / "run" / "completions").exists()
