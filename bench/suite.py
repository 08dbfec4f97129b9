"""The test suite's wall time and how many vLLM engines it loads.

    python bench/suite.py                      # the full suite (`make test`'s pytest)
    python bench/suite.py -m "not engine"      # any pytest arguments

Runs pytest in a subprocess and watches /proc: every vLLM engine, offline or behind `rlaif
serve-model`, runs its core in a process titled `VLLM::EngineCore`, so counting those that descend
from the pytest process counts engine loads in the suite and in every command it starts. Prints
the time, pytest's closing line and the loads. Linux only (it reads /proc).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descends_from(pid: int, root: int) -> bool:
    while pid and pid != 1:
        if pid == root:
            return True
        pid = parent(pid) or 0
    return False


def engine_cores(root: int) -> set[tuple[int, str]]:
    """(pid, start time) of each VLLM::EngineCore process under `root` now."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
            start = (entry / "stat").read_text().rsplit(")", 1)[1].split()[19]
        except OSError:
            continue
        if title.startswith(b"VLLM::EngineCore") and descends_from(int(entry.name), root):
            found.add((int(entry.name), start))
    return found


def main(args: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-ra", *(args or ["tests"])]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []

    def echo() -> None:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    seen: set[tuple[int, str]] = set()
    while proc.poll() is None:
        seen |= engine_cores(proc.pid)
        time.sleep(0.25)
    reader.join()
    seconds = time.monotonic() - start
    closing = next((ln for ln in reversed(lines) if " in " in ln and ("passed" in ln or "failed" in ln)), "")
    print(f"\nsuite: {' '.join(cmd[3:])}")
    print(f"wall time: {int(seconds // 60)} min {seconds % 60:04.1f} s on {len(os.sched_getaffinity(0))} cores")
    print(f"pytest: {closing.strip('= ')}")
    print(f"vLLM engine loads: {len(seen)}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
