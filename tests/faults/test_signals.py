"""Ctrl-C, SIGTERM and kill -9 of `rlaif run` while Prefect's temporary server runs beside it.

Ctrl-C in a terminal reaches the whole foreground process group. The temporary server runs in a
session of its own (so the signal does not kill it under the flow, which then hangs reporting to
it) and watches its parent (so a kill -9 of the command does not leave it running, holding the API
key in its environment). Each case ends in the documented exit code within 5 s, leaves no process
behind, and the rerun finishes the run with no row lost and none paid twice.
"""

from __future__ import annotations

import pytest

from rlaif.rehearsal import fault_cases as cases


@pytest.mark.parametrize("fault", [cases.ctrl_c, cases.sigterm], ids=["sigint", "sigterm"])
def test_a_signal_to_the_process_group_exits_at_once_leaving_nothing_behind(fault, tmp_path, prefect_harness):
    o = fault(tmp_path)
    assert o.exit_code == fault.expect, o.stderr[-3000:]
    assert o.seconds < 5, o.stderr[-3000:]
    assert o.notes["left"] == [], f"still running: {o.notes['left']} of {o.notes['below']}"
    assert len(o.notes["below"]) >= 1  # the temporary server was there to survive
    assert "Traceback" not in o.stderr and "Error logging to API" not in o.stderr
    assert [line for line in o.stderr.splitlines() if line.startswith("error:")], o.stderr
    assert o.notes["rerun"] == 0, o.notes["rerun_stderr"]
    assert o.lost == 0 and o.paid_twice == 0


def test_kill_9_of_the_command_takes_its_temporary_prefect_server_along(tmp_path, prefect_harness):
    o = cases.kill_9_orphan(tmp_path)
    assert o.notes["below"], "the temporary server was not started"
    assert o.notes["left"] == [], f"orphaned: {o.notes['left']}"
    assert o.seconds < 10
