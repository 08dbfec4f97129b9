import json

import pytest

from rlaif.prompts.prompt_sets import PromptSetError, load_prompts


def test_bundled_mt_bench_is_the_published_set():
    prompts = load_prompts("mt_bench")
    assert len(prompts) == 80
    assert prompts[0].prompt_id == "mt_bench-81"
    assert prompts[0].messages[0].role == "user"
    assert "Hawaii" in prompts[0].text
    assert len({p.hash for p in prompts}) == 80
    assert len(load_prompts("mt_bench", limit=5)) == 5


def write(tmp_path, lines, name="prompts.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_accepts_prompt_and_messages_rows(tmp_path):
    path = write(tmp_path, [
        json.dumps({"prompt_id": "a", "prompt": "Say hi."}),
        json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Name a color."},
                                 {"role": "assistant", "content": "Blue."}]}),
    ])
    a, b = load_prompts(str(path))
    assert a.prompt_id == "a" and a.text == "Say hi."
    assert b.prompt_id == "prompts-2"
    assert [m.role for m in b.messages] == ["system", "user"]  # the reference answer is dropped


@pytest.mark.parametrize("bad_line, field, problem", [
    ('{"prompt": "ok"', None, "not valid JSON"),
    ('{"text": "no prompt field"}', "prompt", "missing"),
    ('{"prompt": "   "}', "prompt", "empty"),
    ('{"prompt": 3}', "prompt", "must be a string"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "messages", "role"),
    ('{"messages": [{"role": "user", "content": ""}]}', "messages", "empty"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path, bad_line, field, problem):
    path = write(tmp_path, [json.dumps({"prompt": "fine"}), bad_line])
    with pytest.raises(PromptSetError) as e:
        load_prompts(str(path))
    msg = str(e.value)
    assert str(path) in msg and "line 2" in msg and problem in msg
    assert e.value.row == 2 and e.value.field == field
    if field:
        assert f"field '{field}'" in msg


def test_duplicate_ids_name_both_lines_and_unknown_source_is_an_error(tmp_path):
    path = write(tmp_path, [json.dumps({"prompt_id": "x", "prompt": "a"}), json.dumps({"prompt_id": "y", "prompt": "b"}),
                            json.dumps({"prompt_id": "x", "prompt": "c"})])
    with pytest.raises(PromptSetError) as e:
        load_prompts(str(path))
    assert str(e.value) == f"{path}, line 3, field 'prompt_id': duplicate id 'x' (first on line 1)"
    with pytest.raises(PromptSetError, match="unknown prompt source"):
        load_prompts("no_such_set")


def test_non_utf8_and_a_directory_are_named(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(PromptSetError) as e:
        load_prompts(str(path))
    assert f"{path}, line 2: not UTF-8 (byte 0xe9" in str(e.value)
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(PromptSetError, match="is a directory but not a saved dataset"):
        load_prompts(str(tmp_path / "dir.jsonl"))


def test_saved_dataset_directory_is_a_source(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"prompt_id": "d1", "prompt": "Hello?"}]).save_to_disk(str(tmp_path / "ds"))
    (p,) = load_prompts(str(tmp_path / "ds"))
    assert p.prompt_id == "d1" and p.text == "Hello?"
