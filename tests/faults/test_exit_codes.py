"""Exit codes that tell the truth: a read-only run directory is exit 2 with one line (the README's
"a run directory that cannot be written"), for `run`, `binarize` and `agreement` alike; a disk that
fills up mid-judging is exit 3 (a stage stopped) with one line, and the rerun resumes."""

from __future__ import annotations

from rlaif.rehearsal import fault_cases as cases


def test_a_read_only_finished_run_is_one_line_and_exit_2_for_every_command(tmp_path, prefect_harness):
    o = cases.read_only_run_dir(tmp_path)
    assert o.notes["codes"] == {"run": 2, "binarize": 2, "agreement": 2}, o.stderr[-4000:]
    for name, text in o.notes["errs"].items():
        assert "Traceback" not in text, text[-3000:]
        (line,) = [x for x in text.splitlines() if x.startswith("error:")]
        assert "cannot write the run directory" in line and "Permission denied" in line, line


def test_a_disk_that_fills_up_mid_judging_is_exit_3_and_the_rerun_resumes(tmp_path, prefect_harness):
    o = cases.disk_full_judging(tmp_path)
    assert o.exit_code == 3, o.stderr[-3000:]
    assert "Traceback" not in o.stderr
    (line,) = [x for x in o.stderr.splitlines() if x.startswith("error:")]
    assert "stage 'judge'" in line and "File too large" in line and "a rerun resumes" in line
    assert o.notes["rerun"] == 0, o.notes["rerun_stderr"]
    assert o.lost == 0 and o.paid_twice == 0
