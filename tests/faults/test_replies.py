"""Malformed replies: a 200 that is not a completion (cut JSON, an HTML page, `choices: []`) is a
transient failure of that one request, tried again, and the answers already received are kept (no
request answered twice); a reply with no text (`content: null`, a content filter) is a failed row
the rerun sends again, as the README's exit code 4 says; an unparseable Retry-After falls back to
the usual backoff. Engine-level cases check the same on `EndpointEngine` directly."""

from __future__ import annotations

from collections import Counter

import pytest

from rlaif.rehearsal import fault_cases as cases
from rlaif.engines.base import Request, Sampling
from rlaif.engines.openai_endpoint import Endpoint, EndpointEngine, retry_after


@pytest.mark.parametrize("fault", [cases.truncated_json, cases.html_page, cases.no_choices],
                         ids=["truncated", "html", "no-choices"])
def test_a_malformed_200_is_a_transient_failure_of_one_row(fault, tmp_path, prefect_harness):
    o = fault(tmp_path)
    assert o.exit_code == 0, o.stderr[-3000:]
    assert o.notes["faulted"] == 1 and o.lost == 0 and o.paid_twice == 0


def test_content_null_fails_its_row_and_the_rerun_sends_it_again(tmp_path, prefect_harness):
    o = cases.content_null(tmp_path)
    assert o.exit_code == 4, o.stderr[-3000:]
    assert "the reply has no text" in o.stderr and "a rerun sends the 1 transient ones again" in o.stderr
    assert o.notes["rerun"] == 0, o.notes["rerun_stderr"]
    assert o.lost == 0 and o.notes["generated_twice"] == 0
    # the rerun judges only the completion made again, not its chunk's others (judging keyed per completion)
    assert o.notes["judged_twice"] == 0


def test_a_retry_after_that_is_no_number_or_date_falls_back_to_backoff(tmp_path, prefect_harness):
    o = cases.retry_after_soon(tmp_path)
    assert o.exit_code == 0, o.stderr[-3000:]
    assert o.lost == 0 and o.paid_twice == 0


def test_retry_after_values():
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def requests(n: int) -> list[Request]:
    return [Request(key=f"q{i}", sampling=Sampling(max_tokens=32), seed=i,
                    messages=[{"role": "user", "content": f"Say {i}."}]) for i in range(n)]


@pytest.mark.parametrize("kind", ["truncated", "html", "no_choices"])
def test_an_engine_call_keeps_every_answer_around_a_malformed_one(kind, monkeypatch):
    monkeypatch.setenv("FAULT_KEY", cases.KEY)
    faulted: Counter = Counter()
    with cases.server(fault=cases._spoil_once(kind, "Say 2.", faulted)) as srv:
        e = Endpoint(base_url=srv.base_url, api_key_env="FAULT_KEY", provider="openai", max_retries=1, max_concurrency=2)
        results = EndpointEngine(e, "gpt-4o-mini").generate(requests(5))
        assert [r.text for r in results] == [f"Say {i}. from gpt-4o-mini" for i in range(5)]
        assert cases.twice(cases.answered(srv, faulted)) == 0 and srv.count("/chat/completions") == 6
        # with no retry left, the row comes back failed and retryable; the others are kept
        faulted.clear()
        srv.fault = cases._spoil_once(kind, "Say 2.", faulted)
        results = EndpointEngine(e.model_copy(update={"max_retries": 0}), "gpt-4o-mini").generate(requests(5))
        assert [r.ok for r in results] == [True, True, False, True, True]
        assert results[2].retryable and "HTTP 200" in results[2].error


def test_an_engine_reply_with_no_text_is_a_retryable_row(monkeypatch):
    monkeypatch.setenv("FAULT_KEY", cases.KEY)
    with cases.server(fault=cases._spoil_once("content_null", "Say 1.", Counter())) as srv:
        e = Endpoint(base_url=srv.base_url, api_key_env="FAULT_KEY", provider="openai", max_retries=2)
        results = EndpointEngine(e, "gpt-4o-mini").generate(requests(3))
        assert [r.ok for r in results] == [True, False, True]
        assert results[1].retryable and "content_filter" in results[1].error
        assert srv.count("/chat/completions") == 3  # not asked again in this call: a filter answers the same
