"""Shared fixtures: real bundled models, one loaded engine per model for the session, a tiny 2-layer
model from a real config, and the user's home isolated. What the tests import (names, helpers, the
fake endpoints) is in tests/support/; this file holds pytest's fixtures and hooks.

The home is isolated here, at import time, before any test module imports prefect or datasets
(tests/support/isolation.py): HOME, PREFECT_HOME, HF_HOME and the XDG folders are a temporary folder, so the
suite never reads or writes the user's ~/.prefect or ~/.cache, and the session ends with a check
that it wrote nothing there. Tests that load a vLLM engine carry the `engine` marker (given here to
every test that uses the session's engine); `make test-fast` runs the others.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.isolation import isolate  # before anything reads HOME

HOME_WRITES = isolate(Path(__file__).resolve().parents[1])
_PREFECT_HOME = os.environ["PREFECT_HOME"]
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402

from tests.support.helpers import GEMMA, GEMMA_SETTINGS, ROOT, SMOL, SMOL_SETTINGS, free_port, stop_group  # noqa: E402
ENGINE_FIXTURES = {"smol_engine", "gemma_engine", "vllm_server", "trained_engines"}  # using one of these loads a vLLM engine


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items):
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)


EARLY_CLOSE: dict = {}  # session fixture name -> closes it; called once no test left to run uses it


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """A session-wide engine or server is closed after the last test (in the order they run:
    file, reversed or random) that uses it, so big ones do not pile up beside a test that loads its
    own (the quickstart's subprocess needs a 4 GiB KV cache)."""
    if not EARLY_CLOSE:
        return
    items = item.session.items
    rest = items[items.index(item) + 1:]
    for name in list(EARLY_CLOSE):
        if not any(name in getattr(i, "fixturenames", ()) for i in rest):
            EARLY_CLOSE.pop(name)()


@pytest.fixture(scope="session", autouse=True)
def home_untouched():
    """The session ends with a check that nothing in this process wrote to the user's home."""
    yield
    assert not HOME_WRITES.writes, f"the suite wrote to the user's home: {sorted(set(HOME_WRITES.writes))[:20]}"


@pytest.fixture(scope="session")
def prefect_home() -> Path:
    return Path(_PREFECT_HOME)


@pytest.fixture(scope="session")
def prefect_harness(prefect_home):
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    from rlaif.engines.models import prepare_bundled

    return str(prepare_bundled(SMOL))


@pytest.fixture(scope="session")
def smol_engine(smollm2_dir):
    """SmolLM2-135M-Instruct loaded once for the whole session (max_model_len 1024, 1 GiB KV cache)."""
    from rlaif.engines.vllm_offline import VLLMEngine

    with VLLMEngine(smollm2_dir, SMOL_SETTINGS, label=SMOL) as engine:
        yield engine


@pytest.fixture(scope="session")
def vllm_server(smollm2_dir):
    """`rlaif serve-model` (vLLM's own OpenAI server) for SmolLM2 on 127.0.0.1, one for the session:
    waits for /v1/models; stopped after the last test that uses it."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rlaif", "serve-model", SMOL, "--port", str(port)], cwd=ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 300
    while True:
        try:
            with urllib.request.urlopen(url + "/models", timeout=5) as r:
                if SMOL in r.read().decode():
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            stop_group(proc, timeout=0)
            pytest.fail(f"vLLM server did not come up (exit code {proc.poll()})")
        time.sleep(2)
    EARLY_CLOSE["vllm_server"] = lambda: stop_group(proc, timeout=30)
    yield url
    EARLY_CLOSE.pop("vllm_server", None)
    stop_group(proc, timeout=30)


@pytest.fixture(scope="session")
def gemma_engine():
    """Gemma 3 270M, loaded once for the session by the first test that asks for it."""
    from rlaif.engines.models import prepare_bundled
    from rlaif.engines.vllm_offline import VLLMEngine

    engine = VLLMEngine(str(prepare_bundled(GEMMA)), GEMMA_SETTINGS, label=GEMMA)
    EARLY_CLOSE["gemma_engine"] = engine.close
    yield engine
    EARLY_CLOSE.pop("gemma_engine", None)
    engine.close()  # a no-op when closed already


@pytest.fixture
def pool(smol_engine):
    """An engine pool that already holds the session's SmolLM2 engine for SMOL_SETTINGS."""
    from rlaif.engines.pool import EnginePool, EngineSpec

    with EnginePool() as p:
        p.put(EngineSpec(SMOL, None, SMOL_SETTINGS), smol_engine)
        yield p


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> str:
    """SmolLM2's real config cut to 2 layers, random weights, with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(smollm2_dir)
    config.num_hidden_layers = 2
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = tmp_path_factory.mktemp("tiny-smollm2")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(out)
    return str(out)
