"""Recipes: validation that names the file and the field, overrides, and errors as one line."""

import subprocess
import sys

import pytest

from tests.support.helpers import ROOT
from rlaif.recipe.spec import RecipeError, load_recipe

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def test_quickstart_recipe_validates():
    r = load_recipe(QUICKSTART)
    assert [g.format for g in r.generators] == ["chat", "urial"]
    assert r.judges[0].kind == "ultrafeedback" and r.binarize.score == "auto"
    assert r.train.dpo.get("beta") == 0.1 and r.train.dpo.model is None


def test_overrides_set_nested_fields():
    r = load_recipe(QUICKSTART, ["prompts.limit=3", "generators.1.sampling.max_tokens=16", "train.dpo.beta=0.2"])
    assert r.prompts.limit == 3 and r.generators[1].sampling.max_tokens == 16 and r.train.dpo.get("beta") == 0.2


def test_unknown_and_wrong_fields_are_named(tmp_path):
    text = QUICKSTART.read_text().replace("temperature: 0.0, max_tokens: 96", "temprature: 0.0, max_tokens: many")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_recipe(bad)
    msg = str(e.value)
    assert f"{bad}: field 'judges.0.sampling.temprature': unknown field" in msg
    assert f"{bad}: field 'judges.0.sampling.max_tokens'" in msg


def test_a_training_field_that_is_not_trls_is_named(tmp_path):
    text = QUICKSTART.read_text()
    assert "    learning_rate:" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("    learning_rate:", "    learnig_rate:", 1))
    with pytest.raises(RecipeError) as e:
        load_recipe(bad)
    assert str(e.value) == (f"{bad}: field 'train.sft.learnig_rate': unknown field (neither ours nor in TRL's "
                            "SFTConfig)")


def test_generator_names_must_be_unique():
    with pytest.raises(RecipeError, match="field 'generators': Value error, generator names must be unique"):
        load_recipe(QUICKSTART, ["generators.1.name=smollm2-135m"])


@pytest.mark.parametrize("make, problem", [
    (lambda tmp: tmp, "is a directory; give the recipe's YAML file"),
    (lambda tmp: tmp / "nope.yaml", "recipe not found"),
    (lambda tmp: (tmp / "r.yaml", (tmp / "r.yaml").write_text("name: [unclosed\n"))[0], "line 2: not valid YAML"),
    (lambda tmp: (tmp / "r.yaml", (tmp / "r.yaml").write_text("- a list\n"))[0], "a recipe is a YAML mapping"),
])
def test_recipe_files_that_cannot_be_read_are_one_line(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert str(e.value).startswith(f"{path}") and problem in str(e.value) and "\n" not in str(e.value)


def test_a_bad_override_path_is_named():
    with pytest.raises(RecipeError, match=r"--set 'generators.7.name=x': 'generators.7.name' is not a field path"):
        load_recipe(QUICKSTART, ["generators.7.name=x"])
    with pytest.raises(RecipeError, match="must look like key.path=value"):
        load_recipe(QUICKSTART, ["prompts.limit"])


def test_cli_reports_a_bad_prompt_file_in_one_line_before_loading_models(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    proc = subprocess.run([sys.executable, "-m", "rlaif", "run", str(QUICKSTART), "--out", str(tmp_path / "run"),
                           "--set", f"prompts.source={prompts}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert any(ln.startswith(f"error: {prompts}, line 2, field 'prompt': is empty") for ln in lines), lines
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "completions").exists()
    assert list((tmp_path / "run" / "logs").glob("*.log"))  # the traceback, if any, is there
