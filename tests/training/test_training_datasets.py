"""Every known dataset layout maps to TRL's explicit conversational form; one trains a DPO step."""

from __future__ import annotations

import json
import re
import logging
import math
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, load_from_disk

from rlaif.core.errors import ConfigError
from rlaif.training.datasets import load_preferences, load_sft


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


# HuggingFaceH4/ultrafeedback_binarized's exact columns: a string prompt beside whole conversations
UF_ROWS = [
    {"prompt": f"What is {i} plus {i}?", "prompt_id": f"p{i}",
     "chosen": [user(f"What is {i} plus {i}?"), bot(f"{i} plus {i} is {2 * i}.")],
     "rejected": [user(f"What is {i} plus {i}?"), bot("I like turtles.")],
     "messages": [user(f"What is {i} plus {i}?"), bot(f"{i} plus {i} is {2 * i}.")],
     "score_chosen": 9.0, "score_rejected": 2.0}
    for i in range(4)
]
EXPECTED_0 = {"prompt": [user("What is 0 plus 0?")], "chosen": [bot("0 plus 0 is 0.")], "rejected": [bot("I like turtles.")]}


def save_splits(path: Path, **splits: list[dict]) -> str:
    DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path))
    return str(path)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def layout_logged(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if "mapped as" in r.getMessage()]
    return lines[-1].split("mapped as ", 1)[1]


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="rlaif.training.datasets")


# ----------------------------------------------------------------------------- preference layouts
def test_ultrafeedback_binarized_layout_is_made_explicit(tmp_path, caplog):
    ds = load_preferences(save_splits(tmp_path / "uf", train_prefs=UF_ROWS, test_prefs=UF_ROWS[:1]), "train_prefs", tmp_path)
    assert ds.column_names == ["prompt", "chosen", "rejected"] and len(ds) == 4
    assert ds[0] == EXPECTED_0
    assert layout_logged(caplog) == "HuggingFaceH4/ultrafeedback_binarized"
    assert not list((tmp_path / "uf").rglob("cache-*.arrow"))  # nothing written into the source's folder


def test_run_dataset_is_the_default_source(tmp_path, caplog):
    run = save_splits(tmp_path / "run", train_prefs=[EXPECTED_0])
    assert load_preferences(None, "train_prefs", run)[0] == EXPECTED_0
    assert layout_logged(caplog) == "explicit conversational"
    with pytest.raises(ConfigError, match="no dataset here; run the binarize stage first"):
        load_preferences(None, "train_prefs", tmp_path / "missing")


def test_explicit_layout_cuts_a_repeated_prompt_and_keeps_system_and_earlier_turns(tmp_path):
    prompt = [system("Be terse."), user("Hi"), bot("Hello."), user("Add 2 and 2.")]
    rows = [{"prompt": prompt, "chosen": [*prompt, bot("4")], "rejected": [bot("5")]}]
    ds = load_preferences(write_jsonl(tmp_path / "x.jsonl", rows), "train_prefs", tmp_path)
    assert ds[0] == {"prompt": prompt, "chosen": [bot("4")], "rejected": [bot("5")]}


@pytest.mark.parametrize("name,row,layout", [
    ("string prompt + assistant lists", {"prompt": "Say hi.", "chosen": [bot("Hi!")], "rejected": [bot("No.")]},
     "string prompt + messages"),
    ("string prompt + conversations", {"prompt": "Say hi.", "chosen": [user("Say hi."), bot("Hi!")],
                                       "rejected": [user("Say hi."), bot("No.")]}, "string prompt + messages"),
    ("standard text", {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}, "standard text (TRL)"),
    ("implicit conversational", {"chosen": [user("Say hi."), bot("Hi!")], "rejected": [user("Say hi."), bot("No.")]},
     "implicit conversational (TRL)"),
    ("hh-rlhf", {"chosen": "\n\nHuman: Say hi.\n\nAssistant: Hi!", "rejected": "\n\nHuman: Say hi.\n\nAssistant: No."},
     "Human/Assistant text (Anthropic/hh-rlhf)"),
])
def test_each_preference_layout_maps_to_the_same_rows(tmp_path, caplog, name, row, layout):
    ds = load_preferences(write_jsonl(tmp_path / "d" / "train.jsonl", [row]), "train_prefs", tmp_path)  # folder: train -> train_prefs
    assert ds[0] == {"prompt": [user("Say hi.")], "chosen": [bot("Hi!")], "rejected": [bot("No.")]}
    assert layout_logged(caplog) == layout


def test_orca_pairs_keep_their_system_prompt_and_hh_keeps_earlier_turns(tmp_path, caplog):
    orca = [{"system": "You are kind.", "question": "Say hi.", "chosen": "Hi!", "rejected": "No."},
            {"system": "", "question": "Say bye.", "chosen": "Bye!", "rejected": "No."}]
    ds = load_preferences(write_jsonl(tmp_path / "orca.jsonl", orca), "train", tmp_path)
    assert ds[0]["prompt"] == [system("You are kind."), user("Say hi.")] and ds[1]["prompt"] == [user("Say bye.")]
    assert layout_logged(caplog) == "question + answers (Intel/orca_dpo_pairs)"
    hh = [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: 2+2?\n\nAssistant: 4",
           "rejected": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: 2+2?\n\nAssistant: 5"}]
    ds = load_preferences(write_jsonl(tmp_path / "hh.jsonl", hh), "train", tmp_path)
    assert ds[0] == {"prompt": [user("Hi"), bot("Hello."), user("2+2?")], "chosen": [bot("4")], "rejected": [bot("5")]}


def test_hf_source_and_parquet_folder(tmp_path, caplog):
    folder = tmp_path / "pq"
    folder.mkdir()
    Dataset.from_list(UF_ROWS).to_parquet(str(folder / "train_prefs-00000.parquet"))
    Dataset.from_list(UF_ROWS[:1]).to_parquet(str(folder / "test_prefs-00000.parquet"))
    assert len(load_preferences(str(folder), "test_prefs", tmp_path)) == 1
    ds = load_preferences(f"hf:{folder}", "train_prefs", tmp_path)  # load_dataset(id, split=...) reads a folder too
    assert len(ds) == 4 and ds[0] == EXPECTED_0
    with pytest.raises(ConfigError, match=r"^hf:.*Unknown split"):
        load_preferences(f"hf:{folder}", "validation", tmp_path)


def test_unknown_layout_names_source_columns_and_expected(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"instruction": "x", "good": "y", "bad": "z"}])
    with pytest.raises(ConfigError) as e:
        load_preferences(path, "train_prefs", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(path)
    assert "instruction (text), good (text), bad (text)" in msg
    assert "standard text (TRL): prompt (text), chosen (text), rejected (text)" in msg
    assert "HuggingFaceH4/ultrafeedback_binarized" in msg


GOOD_UF = {"prompt": "Q", "chosen": [user("Q"), bot("A")], "rejected": [user("Q"), bot("B")]}
GOOD_EXPLICIT = {"prompt": [user("Q")], "chosen": [bot("A")], "rejected": [bot("B")]}
GOOD_TEXT = {"prompt": "Q", "chosen": "A", "rejected": "B"}


@pytest.mark.parametrize("good,bad,field,problem", [
    (GOOD_UF, {**GOOD_UF, "rejected": [user("other"), bot("B")]}, "rejected", "differ from the prompt"),
    (GOOD_UF, {**GOOD_UF, "chosen": [user("Q"), user("A")]}, "chosen", "must end with an assistant message"),
    (GOOD_EXPLICIT, {**GOOD_EXPLICIT, "prompt": [bot("Q")]}, "prompt", "must end with a user turn"),
    (GOOD_EXPLICIT, {**GOOD_EXPLICIT, "chosen": [{"role": "robot", "content": "A"}]}, r"chosen\[0\]",
     "role: system\\|user\\|assistant"),
    (GOOD_TEXT, {**GOOD_TEXT, "rejected": " "}, "rejected", "is empty"),
])
def test_a_bad_row_is_one_line_naming_source_row_and_field(tmp_path, good, bad, field, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [good, bad])
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)}, split train_prefs, row 1, field '{field}': .*{problem}") as e:
        load_preferences(path, "train_prefs", tmp_path)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- SFT layouts
def test_sft_layouts(tmp_path, caplog):
    conv = [system("Be terse."), user("Hi"), bot("Hello."), user("2+2?"), bot("4")]
    ours = save_splits(tmp_path / "run", train_sft=[{"prompt": [user("Q")], "completion": [bot("A")], "messages": [user("Q"), bot("A")],
                                                      "prompt_id": "p"}])
    assert load_sft(None, "train_sft", ours)[0] == {"prompt": [user("Q")], "completion": [bot("A")]}
    assert layout_logged(caplog) == "prompt + completion messages"

    # the Zephyr dSFT set: whole multi-turn conversations, trained on every token
    chat = write_jsonl(tmp_path / "ultrachat.jsonl", [{"prompt": "Hi", "prompt_id": "u1", "messages": conv}])
    assert load_sft(chat, "train_sft", tmp_path)[0] == {"messages": conv}
    assert layout_logged(caplog) == "HuggingFaceH4/ultrachat_200k"

    cases = [
        ({"prompt": "Q", "completion": "A"}, "prompt + completion text (TRL)"),
        ({"instruction": "Q", "input": "", "output": "A"}, "Alpaca"),
        ({"prompt": "Q", "chosen": "A", "rejected": "B"}, "chosen side of standard text (TRL)"),
    ]
    for n, (row, layout) in enumerate(cases):
        ds = load_sft(write_jsonl(tmp_path / f"s{n}.jsonl", [row]), "train_sft", tmp_path)
        assert ds[0] == {"prompt": [user("Q")], "completion": [bot("A")]} and layout_logged(caplog) == layout
    alpaca = load_sft(write_jsonl(tmp_path / "al.jsonl", [{"instruction": "Sum:", "input": "2 2", "output": "4"}]), "train", tmp_path)
    assert alpaca[0]["prompt"] == [user("Sum:\n\n2 2")]

    share = [{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]
    assert load_sft(write_jsonl(tmp_path / "sg.jsonl", share), "train", tmp_path)[0] == {"messages": [system("S"), user("Q"), bot("A")]}
    assert layout_logged(caplog) == "ShareGPT conversations"


def test_sft_falls_back_to_the_chosen_side_of_train_prefs(tmp_path, caplog):
    uf = save_splits(tmp_path / "uf", train_prefs=UF_ROWS)
    ds = load_sft(uf, "train_sft", tmp_path)
    assert ds[0] == {"prompt": EXPECTED_0["prompt"], "completion": EXPECTED_0["chosen"]}
    assert layout_logged(caplog) == "chosen side of HuggingFaceH4/ultrafeedback_binarized"
    no_assistant = write_jsonl(tmp_path / "m.jsonl", [{"messages": [user("Q")]}])
    with pytest.raises(ConfigError, match=r"row 0, field 'messages': has no assistant turn"):
        load_sft(no_assistant, "train", tmp_path)
    with pytest.raises(ConfigError, match=r"no known SFT layout for columns \[text \(text\)\]"):
        load_sft(write_jsonl(tmp_path / "t.jsonl", [{"text": "raw"}]), "train", tmp_path)


# ----------------------------------------------------------------------------- end to end with TRL
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """SmolLM2's real config cut to 2 layers, random weights, with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rlaif.engines.models import prepare_bundled

    src = str(prepare_bundled("smollm2-135m-instruct"))
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(src)
    config.num_hidden_layers = 2
    out = tmp_path_factory.mktemp("tiny")
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out)


def test_one_dpo_step_on_mapped_ultrafeedback_binarized(tmp_path, tiny_model):
    from trl import DPOConfig, DPOTrainer

    ds = load_preferences(save_splits(tmp_path / "uf", train_prefs=UF_ROWS), "train_prefs", tmp_path)
    args = DPOConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, max_length=64,
                     learning_rate=1e-4, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1)
    trainer = DPOTrainer(model=tiny_model, args=args, train_dataset=ds)
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)
    assert load_from_disk(str(tmp_path / "uf"))["train_prefs"].column_names[0] == "prompt"  # source untouched
