"""The Batch API path: a batch that fails as a whole is not collected again on every rerun (the
rerun sends a new batch once the cause is fixed), and its errors never show the key."""

from __future__ import annotations

from rlaif.rehearsal import fault_cases as cases


def test_a_batch_that_failed_as_a_whole_is_sent_again_by_the_rerun(tmp_path, prefect_harness):
    o = cases.batch_failed_whole(tmp_path)
    assert o.exit_code == 3, o.stderr[-3000:]
    assert "billing_hard_limit_reached" in o.stderr and "a rerun sends a new batch" in o.stderr
    assert not o.notes["key_shown"]
    assert o.notes["rerun"] == 0, o.notes["rerun_stderr"]
    assert o.notes["batches"] == 2 and o.lost == 0 and o.paid_twice == 0


def test_a_key_quoted_in_a_batch_error_is_never_shown_or_stored(tmp_path, prefect_harness):
    o = cases.batch_403_quotes_key(tmp_path)
    assert o.exit_code == 3, o.stderr[-3000:]
    assert "HTTP 403" in o.stderr and o.notes["masked"]
    assert not o.notes["key_shown"]
    assert o.notes["rerun"] == 0 and o.lost == 0 and o.paid_twice == 0
