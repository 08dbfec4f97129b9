"""Stand-ins: tiny models and small datasets under real hub ids, in a Hugging Face cache laid out
as the hub and `datasets` write it.

A user who downloaded `mistralai/Mistral-7B-Instruct-v0.2` and `HuggingFaceH4/ultrafeedback_binarized`
has, under `$HF_HOME`:

    hub/models--mistralai--Mistral-7B-Instruct-v0.2/refs/main               the revision
    hub/models--mistralai--Mistral-7B-Instruct-v0.2/snapshots/<rev>/...      config, tokenizer, weights
    hub/datasets--HuggingFaceH4--ultrafeedback_binarized/snapshots/<rev>/data/<split>-*.parquet
    datasets/HuggingFaceH4___ultrafeedback_binarized/default/0.0.0/<rev>/    what load_dataset prepared

With `HF_HUB_OFFLINE=1`, transformers and vLLM load the model from the snapshot, and
`datasets.load_dataset(id, split=...)` reads the prepared copy. `add_model` and `add_dataset` write
exactly that, so a command run against such a cache takes the same code paths as on the user's
machine (hub ids, not local paths), at a size a CPU runs in seconds.

The models are of two kinds, as recipes use them: `chat` (a chat template: instruct models, judges)
and `base` (none: pretrained models, which answer through URIAL and get a template in dSFT). Both
are SmolLM2-135M-Instruct's config and tokenizer (the bundled model) cut to 2 narrow layers, with
random weights seeded by the id (`seed_of`): they load, generate, judge under guided decoding and train like the real
ones, and say nothing about quality.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Literal

Kind = Literal["chat", "base"]


def revision(repo_id: str) -> str:
    """A fixed 40-hex revision per id (the hub's commit hashes have this shape)."""
    return hashlib.sha1(f"rehearsal:{repo_id}".encode()).hexdigest()


def tiny_model(out: Path, kind: Kind, seed: int = 0) -> Path:
    """A tiny model of `kind` in `out` (made once; later calls return it). Stand-ins for different
    ids get different seeds: identical members would answer alike and every judgement would tie."""
    out = Path(out)
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlaif.engines.models import TEMPLATE_FILES, prepare_bundled

    source = prepare_bundled("smollm2-135m-instruct")
    config = AutoConfig.from_pretrained(source)
    config.update({"num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 256,
                   "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    model.save_pretrained(work)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json") + TEMPLATE_FILES:
        if (source / name).exists():
            shutil.copy(source / name, work / name)
    if kind == "base":
        for name in TEMPLATE_FILES:
            (work / name).unlink(missing_ok=True)
        tok = json.loads((work / "tokenizer_config.json").read_text())
        tok.pop("chat_template", None)
        (work / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(work, out)
    return out


def _repo_dir(hf_home: Path, kind: str, repo_id: str) -> Path:
    return Path(hf_home) / "hub" / f"{kind}--{repo_id.replace('/', '--')}"


def seed_of(repo_id: str) -> int:
    return int(revision(repo_id)[:8], 16)


def add_model(hf_home: Path, repo_id: str, model_dir: Path) -> Path:
    """`model_dir`'s files as the hub's snapshot of `repo_id` (links, as the hub's own snapshots are)."""
    rev = revision(repo_id)
    repo = _repo_dir(hf_home, "models", repo_id)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    for f in Path(model_dir).iterdir():
        if f.is_file() and not (snap / f.name).exists():
            (snap / f.name).symlink_to(f.resolve())
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    return snap


def add_dataset(hf_home: Path, repo_id: str, splits: dict[str, list[dict]]) -> None:
    """`splits` (name -> rows) as the hub's snapshot of dataset `repo_id` (Parquet files) and as the
    copy `load_dataset` prepares from them, which it reads offline."""
    import datasets
    from datasets.packaged_modules.parquet.parquet import Parquet

    rev = revision(repo_id)
    repo = _repo_dir(hf_home, "datasets", repo_id)
    data = repo / "snapshots" / rev / "data"
    data.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in splits.items():
        path = data / f"{split}-00000-of-00001.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(path))
        files[split] = [str(path)]
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    # The builder `load_dataset` would have run online, named as it names it (repo, "default", rev).
    builder = Parquet(cache_dir=str(Path(hf_home) / "datasets"), dataset_name=repo_id.split("/")[-1],
                      config_name="default", data_files=files, hash=rev)
    builder.repo_id, builder.config_id = repo_id, "default"
    builder._cache_dir = builder._build_cache_dir()
    builder.download_and_prepare()


def model_kind(repo_id: str, hint: Kind | None = None) -> Kind:
    """Whether a hub model is a chat or a base model: from its tokenizer files where the local cache
    or the hub has them (small files only), else `hint`, else from its name."""
    from rlaif.engines.models import TOKENIZER_FILES, chat_template_in, model_files

    path = model_files(repo_id, fetch=TOKENIZER_FILES)
    if path is not None:
        return "chat" if chat_template_in(path) else "base"
    if hint is not None:
        return hint
    name = repo_id.lower()
    return "chat" if any(w in name for w in ("instruct", "chat", "-it", "zephyr", "-sft", "-dpo", "tulu")) else "base"
