"""Generation through OpenAI-compatible endpoints: real HTTP servers on 127.0.0.1."""

from pathlib import Path

import pytest

from rlaif.core.errors import ConfigError
from rlaif.core.records import Completion
from rlaif.core.store import RunStore
from rlaif.engines.base import Sampling
from rlaif.engines.openai_endpoint import Endpoint, EndpointEngine, EndpointRefused
from rlaif.generation.ensemble import STAGE, GeneratorSpec, answer
from rlaif.generation.stage import generate
from rlaif.prompts.prompt_sets import load_prompts
from rlaif.rehearsal.openai_server import ApiError
from tests.support.endpoints import asked, posted, said, serving
from tests.support.helpers import chunks


class Flaky:
    """Steers an endpoint: each chat completion gets the next status in `statuses` (the last one
    repeats), "  pong  " when 200. `seen`: the bodies answered; `keys`: the Authorization headers."""

    def __init__(self, srv):
        self.srv, self.statuses, self.since = srv, [200], 0
        srv.fault = self.fault

    def fault(self, path, body):
        if body is None:
            return None
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return None if status == 200 else status

    @property
    def seen(self) -> list[dict]:
        return posted(self.srv)[self.since:]

    @seen.setter
    def seen(self, value: list) -> None:  # `seen = []`: count from now on
        assert value == []
        self.since = len(posted(self.srv))

    @property
    def keys(self) -> list[str]:
        return self.srv.keys


@pytest.fixture
def flaky():
    """A server of this test's own: a request still in flight from another test cannot land in it."""
    with serving(lambda body: said("  pong  ")) as srv:
        yield Flaky(srv), srv.base_url


def spec(url, retries):
    return GeneratorSpec(name="remote", model="served", endpoint=Endpoint(base_url=url, max_retries=retries, max_concurrency=2),
                         sampling=Sampling(max_tokens=8))


def test_a_500_is_retried_with_backoff(flaky):
    handler, url = flaky
    handler.statuses = [500, 200]
    prompts = load_prompts("mt_bench", limit=1)
    s = spec(url, retries=2)
    (c,) = answer(EndpointEngine(s.endpoint, s.model), s, prompts)
    assert c.ok and c.text == "pong" and c.output_tokens == 1
    assert len(handler.seen) == 2  # one failure, one retry
    assert handler.seen[0]["messages"][-1]["content"] == prompts[0].text


def test_a_row_that_keeps_failing_is_kept_and_retried_next_run(flaky, tmp_path, monkeypatch):
    handler, url = flaky
    monkeypatch.setenv("TEST_API_KEY", "sk-secret-value")
    prompts = load_prompts("mt_bench", limit=3)
    s = spec(url, retries=1).model_copy(update={"endpoint": Endpoint(base_url=url, max_retries=1, api_key_env="TEST_API_KEY")})
    store = RunStore(tmp_path)
    pm = chunks(store, prompts)
    handler.statuses = [200, 500]  # the first request succeeds, every later one fails
    m = generate(pm, [s], store)
    first = list(store.read_manifest(m, Completion))
    failed = [c for c in first if not c.ok]
    assert len(first) == 3 and len(failed) == 2 and m.total("retryable") == 2
    assert all(c.retryable and c.error.startswith("HTTP 500") and c.text is None for c in failed)
    assert set(handler.keys) == {"Bearer sk-secret-value"}  # the key is sent...
    assert "sk-secret-value" not in "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())  # ...never stored

    handler.statuses, handler.seen = [200], []
    m = generate(pm, [s], store)
    second = list(store.read_manifest(m, Completion))
    assert len(handler.seen) == 2  # only the failed rows went out again
    assert all(c.ok for c in second) and [c.prompt_id for c in second] == [p.prompt_id for p in prompts]
    assert m.total("retryable") == 0


def test_an_error_no_retry_fixes_stops_the_stage_and_writes_nothing(flaky, tmp_path):
    handler, url = flaky
    handler.statuses = [401]
    store = RunStore(tmp_path)
    s = spec(url, retries=3)
    with pytest.raises(EndpointRefused, match=rf"{url} refused a request for model served: HTTP 401"):
        generate(chunks(store, load_prompts("mt_bench", limit=3)), [s], store)
    assert len(handler.seen) <= 2  # max_concurrency requests at most, never retried
    assert not list((tmp_path / STAGE).glob("shard-*.jsonl"))  # nothing final written: the next run sends them


class EchoesTheKey:
    """A careless server's faults: its error bodies quote the API key it was sent. It answers 503 to
    prompts holding FAIL, and 401 to everything once `refuse` is set."""

    def __init__(self, key: str):
        self.key, self.refuse = key, False

    def fault(self, path, body):
        if body is None:
            return None
        if self.refuse:
            return ApiError(401, f"Incorrect API key provided: {self.key}", code="invalid_api_key")
        if "FAIL" in asked(body):
            return ApiError(503, f"overloaded; dropped the request of Bearer {self.key}", type="server_error")
        return None


def test_an_api_key_the_server_echoes_is_sent_and_lands_nowhere(tmp_path, monkeypatch, capsys, caplog, prefect_harness):
    """Through `rlaif generate`: a transient error that quotes the key (kept as a failed row, noted on
    the console, logged) and a refusal that quotes it (the stage's error): the key is in no shard,
    metadata, summary, log, console line, Prefect record or error text."""
    import secrets

    import yaml
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    from tests.support.helpers import write_prompts
    from rlaif.cli.main import main

    key = "sk-echo-" + secrets.token_hex(12)
    monkeypatch.setenv("ECHO_TEST_KEY", key)
    echoes = EchoesTheKey(key)
    with serving(lambda body: said("pong"), fault=echoes.fault) as srv:
        url = srv.base_url
        endpoint = {"base_url": url, "api_key_env": "ECHO_TEST_KEY", "max_retries": 0}
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({
            "name": "echo", "prompts": {"source": str(write_prompts(tmp_path / "p.jsonl", ["Say hi.", "Say FAIL."]))},
            "hygiene": {"near_dup_threshold": None}, "flow": {"retries": 0},
            "generators": [{"name": "served", "model": "served", "sampling": {"max_tokens": 8}, "endpoint": endpoint}],
            "judge": {"name": "j", "model": "served", "endpoint": endpoint}}))
        out = tmp_path / "run"
        assert main(["generate", str(recipe), "--out", str(out)]) == 4  # the 503 row is kept, failed: exit 4
        (failed,) = [c for c in RunStore(out).read_manifest(manifest_of_run(out), Completion) if not c.ok]
        assert failed.retryable and failed.error.startswith("HTTP 503") and "***" in failed.error
        echoes.refuse = True
        assert main(["generate", str(recipe), "--out", str(out)]) == 3  # the failed row again: refused
    assert srv.keys and set(srv.keys) == {f"Bearer {key}"}  # the key was sent, each time
    console = capsys.readouterr()
    assert "HTTP 401" in console.err and "HTTP 503" in console.err  # the errors were shown...
    APILogHandler().flush()
    db = Path(PREFECT_API_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    files = [p for p in [*tmp_path.rglob("*"), *db.parent.glob(db.name + "*")] if p.is_file()]
    assert any(p.suffix == ".log" for p in files) and any(p.name.startswith("shard-") for p in files)
    leaks = [str(p) for p in files if key.encode() in p.read_bytes()]
    assert not leaks and key not in console.out + console.err and key not in caplog.text  # ...without the key


def manifest_of_run(out):
    """The run's completions as a manifest, from its shards' metadata."""
    from rlaif.core.store import Manifest

    store = RunStore(out)
    return Manifest(stage=STAGE, shards=[store.info(STAGE, k, Completion) for k in store.keys(STAGE)])


def test_missing_api_key_variable_is_a_clear_error(flaky, monkeypatch):
    _, url = flaky
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY"):
        Endpoint(base_url=url, api_key_env="NO_SUCH_KEY").api_key()


@pytest.mark.engine
def test_generates_through_vllms_real_server(vllm_server):
    prompts = load_prompts("mt_bench", limit=2)
    s = GeneratorSpec(name="served", model="smollm2-135m-instruct", endpoint=Endpoint(base_url=vllm_server),
                      sampling=Sampling(temperature=0.0, max_tokens=16))
    engine = EndpointEngine(s.endpoint, s.model)
    out = answer(engine, s, prompts)
    assert all(c.ok and c.text and 0 < c.output_tokens <= 16 and c.prompt_tokens > 10 for c in out)
    urial = answer(engine, s.model_copy(update={"format": "urial"}), prompts[:1])
    assert urial[0].ok and urial[0].prompt_tokens > 200  # the in-context prompt went through /v1/completions


@pytest.mark.engine
@pytest.mark.parametrize("kind", ["ultrafeedback", "critique", "mt_bench_single", "pairwise", "mt_bench_pairwise"])
def test_judges_through_vllms_real_server(vllm_server, kind, tmp_path):
    """response_format (JSON schema) or vLLM's regex constraint, and log-probs, over HTTP."""
    from rlaif.core.records import Judgement, PairJudgement
    from rlaif.core.store import Manifest
    from rlaif.judges.spec import JudgeSpec
    from rlaif.judges.stage import run_judge

    store = RunStore(tmp_path)
    prompts = load_prompts("mt_bench", limit=1)
    pm = chunks(store, prompts)
    answers = ["Dear reader, Hawaii was lovely: beaches, volcanoes and kind people.", "no"]
    completions = [Completion(completion_id=f"c{i}", prompt_id=prompts[0].prompt_id, prompt_hash=prompts[0].hash,
                              model=f"m{i}", settings_hash="s", text=t) for i, t in enumerate(answers)]
    cm = Manifest(stage=STAGE, shards=[store.write(STAGE, "c", completions, group=pm.shards[0].key)])
    spec = JudgeSpec(name=kind, kind=kind, model="smollm2-135m-instruct", aspects=["helpfulness"],
                     endpoint=Endpoint(base_url=vllm_server))
    m = run_judge(pm, cm, spec, store)
    records = list(store.read_manifest(m, PairJudgement if spec.pairwise else Judgement))
    assert records and all(r.status == "parsed" for r in records), [r.error for r in records]
    for r in records:
        if kind.endswith("pairwise"):
            assert 0 <= r.p_a <= 1 and all(v.winner for v in r.orders)
        else:
            (a,) = r.aspects.values()
            assert sum(a.probs.values()) == pytest.approx(1.0) and a.expected is not None
