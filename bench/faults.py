"""What the pipeline survives, as a table: each fault of rlaif/rehearsal/fault_cases.py caused for real.

    python bench/faults.py                 every case
    python bench/faults.py -k batch,sig    the cases whose name holds "batch" or "sig"

For each case: the exit code (and the documented one), seconds from the fault to the exit, rows
lost and rows paid twice (requests the local server answered usefully more than once, those in
flight at a kill aside). A case is a function in rlaif/rehearsal/fault_cases.py under `@case(name, expect=...)`;
adding one there adds a row here. Runs `rlaif` children against the strict local OpenAI server and
Prefect's test server (started here); no model is loaded. Exits 1 when a row is not what it should be.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="rlaif-bench-faults-prefect-")  # the user's ~/.prefect untouched

from rlaif.rehearsal import fault_cases as cases  # noqa: E402 - each case's children get homes of their own


def row(name: str, expect: int, fn) -> tuple[list[str], bool]:
    with tempfile.TemporaryDirectory(prefix="rlaif-fault-") as tmp:
        start = time.time()
        try:
            o = fn(Path(tmp))
        except Exception as e:  # the case could not reach its fault: a row that says so
            traceback.print_exc(file=sys.stderr)
            return [name, "-", str(expect), f"{time.time() - start:.1f}", "?", "?", f"case failed: {e}"[:60]], False
    n = o.notes
    ok = (o.exit_code == expect and o.lost == 0 and o.paid_twice == 0 and not n.get("left")
          and not n.get("key_shown") and n.get("rerun", 0) == 0)
    note = ", ".join(f"{k}={v}" for k, v in o.notes.items() if k in ("left", "rerun", "key_shown", "codes")
                     and v not in ([], None))
    return [name, str(o.exit_code), str(expect), f"{o.seconds:.1f}", str(o.lost), str(o.paid_twice),
            ("ok" if ok else "WRONG") + (f" ({note})" if note else "")], ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-k", default="", help="only the cases whose name holds this text (several: comma-separated)")
    args = p.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    rows, good = [], True
    with prefect_test_harness(server_startup_timeout=120):
        for name, (expect, fn) in cases.CASES.items():
            if any(k in name.lower() or k in fn.__name__ for k in args.k.lower().split(",")):
                r, ok = row(name, expect, fn)
                rows.append(r)
                good &= ok
                print(" | ".join(r), file=sys.stderr, flush=True)
    header = ["case", "exit", "documented", "seconds to exit", "rows lost", "rows paid twice", ""]
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
