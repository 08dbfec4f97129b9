"""The words a failure is told in: the member and the row that actually failed, the file, line and
field of a bad prompt, and a prompt's id as the file gives it.

    refusals     a server's refusal names the member (or judge) whose request it refused and that
                 request's prompt id, not whichever member a loop ended on, nor row `?`
    surrogates   a lone surrogate ("\\ud800", valid JSON, not Unicode) is refused by the preflight
                 with file, line and field, before any request; not a crash in the prompts stage
    prompt ids   `prompt_id: 0` is the id "0"; `false`, `1.5` and "" are refused with file, line and
                 field (before: replaced by `<file>-<line>` without a word)
"""

from __future__ import annotations

import pytest

from tests.support.faulty import Faulty, error_lines, recipe, sent, url  # noqa: F401 - url: a fixture
from rlaif.cli.main import main
from rlaif.prompts.prompt_sets import PromptSetError, load_prompts


def run(path, out) -> list[str]:
    return ["run", str(path), "--out", str(out)]


# ----------------------------------------------------------------------------- refusals
def test_a_refusal_names_the_member_that_was_refused_and_its_row(url, tmp_path, capsys):
    Faulty.gen, Faulty.only = 401, "Say three."  # gen-a's engine goes first: it meets the refusal
    path, out = recipe(tmp_path, url), tmp_path / "run"
    assert main(run(path, out)) == 3
    (line,) = error_lines(capsys.readouterr().err)
    assert "stage 'generate', model gen-a, row p2:" in line  # before: "model gen-b, row ?"
    assert "refused a request for model gen-a" in line


def test_a_judges_refusal_names_the_prompt_it_was_judging(url, tmp_path, capsys):
    Faulty.judge, Faulty.only = 403, "Say four."
    path, out = recipe(tmp_path, url), tmp_path / "run"
    assert main(run(path, out)) == 3
    (line,) = error_lines(capsys.readouterr().err)
    assert "stage 'judge', model uf, row p3:" in line and "refused a request for model judge" in line


# ----------------------------------------------------------------------------- prompt files
def test_a_lone_surrogate_is_stopped_by_the_preflight_with_file_line_and_field(url, tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt_id": "p0", "prompt": "Say one."}\n'
                      '{"prompt_id": "p1", "prompt": "Say \\ud800 two."}\n'
                      '{"prompt_id": "p2", "messages": [{"role": "user", "content": "ok \\udfff"}]}\n')
    path, out = recipe(tmp_path, url), tmp_path / "run"
    assert main(run(path, out)) == 2  # before: the preflight passed, the prompts stage stopped (exit 3)
    (line, *rest) = error_lines(capsys.readouterr().err)
    assert f"{source}, line 2, field 'prompt': not valid Unicode" in line and not rest
    assert Faulty.seen == [] and not (out / "prompts").exists()
    chat = tmp_path / "chat.jsonl"
    chat.write_text(source.read_text().splitlines(keepends=True)[2])
    with pytest.raises(PromptSetError, match=r"chat.jsonl, line 1, field 'messages.0.content': not valid Unicode"):
        load_prompts(str(chat))


def prompt_file(tmp_path, value: str):
    path = tmp_path / "ids.jsonl"
    path.write_text('{"prompt_id": "a", "prompt": "Say one."}\n'
                    f'{{"prompt_id": {value}, "prompt": "Say two."}}\n')
    return str(path)


@pytest.mark.parametrize("value, kept", [("0", "0"), ("7", "7"), ('"0"', "0"), ('"q-1"', "q-1"), ("null", "ids-2")])
def test_a_prompt_id_is_kept_as_given(tmp_path, value, kept):
    assert [p.prompt_id for p in load_prompts(prompt_file(tmp_path, value))] == ["a", kept]


@pytest.mark.parametrize("value", ["false", "true", "1.5", '""', '"  "', "[1]"])
def test_a_prompt_id_that_is_not_a_string_or_an_integer_is_refused(tmp_path, value):
    with pytest.raises(PromptSetError, match=r"ids.jsonl, line 2, field 'prompt_id': "):
        load_prompts(prompt_file(tmp_path, value))


def test_a_refused_prompt_id_stops_the_run_before_any_request(url, tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt_id": false, "prompt": "Say one."}\n')
    path, out = recipe(tmp_path, url), tmp_path / "run"
    assert main(run(path, out)) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"{source}, line 1, field 'prompt_id': must be a non-empty string or an integer, got False" in line
    assert sent("gen") == []
