"""A recipe is a shared file: what one cannot do to the machine that runs it.

    templates   only from the package or the folder the recipe names (`templates_dir:`, relative to
                the recipe file); a name or version that is a path is refused, naming the field;
                every template renders in Jinja's sandbox (no `cycler.__init__.__globals__.os`)
    engine      `extra` adds vLLM arguments but cannot replace the model, the tokenizer or the seed,
                nor turn on trust_remote_code (that is `engine.trust_remote_code: true`, in sight)
    hashes      a member's or judge's settings hash covers the engine settings that change what it
                writes (dtype, quantization, max_model_len, ...), so a cached shard made with others
                is never reused; recipes that set none keep their hashes
    names       the recipe's `name` (its folder under runs/) and judge names are plain names

No engine and no server: `rlaif run --dry-run` renders every judge template without sending anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlaif.core.errors import ConfigError
from rlaif.engines.base import EngineSettings
from rlaif.engines.vllm_offline import llm_kwargs
from rlaif.cli.main import main
from rlaif.recipe.spec import RecipeError, load_recipe

EVIL = "{{ cycler.__init__.__globals__.os.popen('touch %s').read() }}{{ prompt }}{{ completion }}"


def write_recipe(tmp: Path, **fields) -> Path:
    (tmp / "prompts.jsonl").write_text('{"prompt_id": "p0", "prompt": "Say one."}\n')
    endpoint = {"base_url": "http://127.0.0.1:9/v1"}  # never contacted: a dry run sends nothing
    data = {"name": "safety", "prompts": {"source": str(tmp / "prompts.jsonl")},
            "generators": [{"name": "a", "model": "gen-a", "endpoint": endpoint}],
            "judge": {"name": "uf", "model": "judge", "aspects": ["helpfulness"], "endpoint": endpoint}}
    for dotted, value in fields.items():
        node, *path, last = [data, *dotted.split("__")]
        for k in path:
            node = node[k]
        node[last] = value
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def one_error(capsys) -> str:
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    return line


# ----------------------------------------------------------------------------- templates
def test_a_template_path_outside_the_templates_is_refused_naming_the_field(tmp_path, capsys):
    evil = tmp_path / "elsewhere"
    evil.mkdir()
    (evil / "evil.v1.jinja").write_text(EVIL % (tmp_path / "PWNED"))
    up = "../" * 12 + str(evil / "evil").lstrip("/")
    path = write_recipe(tmp_path, judge__template=up)
    assert main(["run", str(path), "--dry-run"]) == 2
    line = one_error(capsys)
    assert str(path) in line and "field 'judges.0.template'" in line and "not a plain name" in line
    assert not (tmp_path / "PWNED").exists()  # before: the shell command ran, with --dry-run too

    path = write_recipe(tmp_path, judge__template="ultrafeedback_rating", judge__template_version="/etc/passwd")
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "field 'judges.0.template_version'" in one_error(capsys)
    path = write_recipe(tmp_path, **{"generators": [{"name": "a", "model": "m", "format": "urial",
                                                     "urial_version": "../../../x"}]})
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "field 'generators.0.urial_version'" in one_error(capsys)


def test_a_template_from_the_recipes_own_folder_renders_in_the_sandbox(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "evil.v1.jinja").write_text(EVIL % (tmp_path / "PWNED"))
    path = write_recipe(tmp_path, templates_dir="mine", judge__template="evil")
    assert main(["run", str(path), "--dry-run"]) == 2
    line = one_error(capsys)
    assert "template evil.v1" in line and "sandbox" in line and str(tmp_path / "mine") in line
    assert not (tmp_path / "PWNED").exists()


def test_the_recipes_templates_dir_is_relative_to_the_recipe_and_said_in_the_run(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "short.v2.jinja").write_text("Rate this answer to {{ prompt }}: {{ completion }}\n")
    path = write_recipe(tmp_path, templates_dir="mine", judge__template="short", judge__template_version="v2")
    monkeypatch.chdir("/")  # the recipe file's folder counts, not the working directory
    recipe = load_recipe(path)
    assert recipe.templates_dir == str(tmp_path / "mine")  # absolute in the run's recipe.json
    t = recipe.judges[0].judge_template()
    assert (t.name, t.version, t.source) == ("short", "v2", str(tmp_path / "mine"))
    default = load_recipe(write_recipe(tmp_path)).judges[0].judge_template()
    assert default.source == "rlaif/prompts/templates"  # without templates_dir: the package's only
    with pytest.raises(RecipeError, match=r"field 'templates_dir': .*nowhere is not a folder"):
        load_recipe(write_recipe(tmp_path, templates_dir="nowhere"))


# ----------------------------------------------------------------------------- engine.extra
@pytest.mark.parametrize("key", ["model", "tokenizer", "seed"])
def test_engine_extra_cannot_replace_what_the_recipe_names(tmp_path, key, capsys):
    path = write_recipe(tmp_path, engine={"extra": {key: "/somewhere/else"}})
    assert main(["run", str(path), "--dry-run"]) == 2
    line = one_error(capsys)
    assert str(path) in line and "field 'engine.extra'" in line and key in line


def test_trust_remote_code_is_an_explicit_engine_setting_not_an_extra(tmp_path, capsys):
    path = write_recipe(tmp_path, engine={"extra": {"trust_remote_code": True}})
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "engine.trust_remote_code: true" in one_error(capsys)
    assert "trust_remote_code" not in llm_kwargs("m", EngineSettings(), 0, cpu=True)
    assert llm_kwargs("m", EngineSettings(trust_remote_code=True), 0, cpu=True)["trust_remote_code"] is True
    kwargs = llm_kwargs("m", EngineSettings(extra={"kv_cache_dtype": "fp8"}), 0, cpu=True)
    assert kwargs["model"] == "m" and kwargs["kv_cache_dtype"] == "fp8"  # extra still adds


# ----------------------------------------------------------------------------- settings hashes
def local_recipe(tmp: Path, engine: dict | None = None, member_engine: dict | None = None):
    data = yaml.safe_load(write_recipe(tmp).read_text())
    data["generators"] = [{"name": "a", "model": "smollm2-135m-instruct", **({"engine": member_engine} if member_engine else {})}]
    data["judge"] = {"name": "uf", "model": "smollm2-135m-instruct"}
    if engine:
        data["engine"] = engine
    (tmp / "local.yaml").write_text(yaml.safe_dump(data))
    r = load_recipe(tmp / "local.yaml")
    return r.generators[0].settings_hash(), r.judges[0].settings_hash()


def test_a_settings_hash_follows_the_engine_settings_that_change_outputs(tmp_path):
    base = local_recipe(tmp_path)
    changed = [local_recipe(tmp_path, {"dtype": "bfloat16"}), local_recipe(tmp_path, {"quantization": "fp8"}),
               local_recipe(tmp_path, {"max_model_len": 1024}), local_recipe(tmp_path, {"extra": {"kv_cache_dtype": "fp8"}}),
               local_recipe(tmp_path, member_engine={"dtype": "float16"})]
    for gen, judge in changed[:4]:  # the recipe-wide block: every member and the judge
        assert gen != base[0] and judge != base[1]
    assert changed[4][0] != base[0] and changed[4][1] == base[1]  # a member's own block: that member
    assert len({c[0] for c in changed}) == len(changed)
    same = [local_recipe(tmp_path, {"replicas": 4, "num_cpus": 2, "gpu_memory_utilization": 0.5,
                                    "cpu_kv_cache_gb": 8, "extra": {"max_num_seqs": 8}})]
    assert same == [base]  # where and how fast are not what it writes


def test_the_quickstarts_hashes_are_the_ones_its_records_already_carry():
    recipe = load_recipe(Path(__file__).parents[2] / "recipes" / "quickstart.yaml")
    assert [g.settings_hash() for g in recipe.generators] == ["8cfdf7f2868fb8d2", "d76d191f10929474"]
    assert [j.settings_hash() for j in recipe.judges] == ["289869dc1dfe82a9", "7fc87f71d0f7dcbc"]


# ----------------------------------------------------------------------------- names
@pytest.mark.parametrize("field, value", [("name", "../../x"), ("name", "/tmp/x"), ("name", ".."),
                                          ("judge__name", "../../x")])
def test_a_recipe_cannot_write_outside_its_run(tmp_path, capsys, field, value):
    path = write_recipe(tmp_path, **{field: value})
    with pytest.raises(ConfigError):
        load_recipe(path)
    assert main(["run", str(path), "--dry-run"]) == 2
    line = one_error(capsys)
    assert str(path) in line and f"field '{field.replace('judge__', 'judges.0.')}'" in line
