"""The suite runs in a home of its own and never writes to the user's.

`isolate()` runs when conftest is imported, before any test module imports prefect, datasets,
vLLM or matplotlib: HOME, the XDG folders, HF_HOME and PREFECT_HOME point into one temporary
folder, which every command the tests start inherits. Only the converted bundled models are
shared with the user's cache (`$RLAIF_HOME/models`, linked in, read and written as a user run
would), so the suite converts nothing twice.

`HomeWrites` is the check: a Python audit hook that records every write this process makes under
the user's real home (files opened for writing, folders made, renames, removals, links, SQLite
databases opened), except the shared models, the repository itself (it may live in the home, as
on CI) and bytecode caches. The conftest asserts at the end of the session that it recorded none.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
WRITES = {"os.mkdir": 1, "os.rename": 2, "os.remove": 1, "os.rmdir": 1, "os.symlink": 2, "os.link": 2,
          "os.truncate": 1, "os.chmod": 1, "sqlite3.connect": 1}  # event -> how many leading path arguments


class HomeWrites:
    """Paths under `home` that this process wrote (see the module docstring)."""

    def __init__(self, home: Path, allowed: list[Path]):
        self.home = str(home.resolve()) + os.sep
        self.allowed = [str(p.resolve()) for p in allowed]
        self.writes: list[str] = []

    def _check(self, path) -> None:
        if isinstance(path, int) or path is None:
            return
        try:
            path = os.path.abspath(os.fsdecode(path))
        except (TypeError, ValueError):
            return
        if (path.startswith(self.home) and "__pycache__" not in path
                and not any(path == a or path.startswith(a + os.sep) for a in self.allowed)):
            self.writes.append(path)

    def __call__(self, event: str, args: tuple) -> None:
        if event == "open":
            path, _, flags = args
            if flags & WRITE_FLAGS:
                self._check(path)
        elif event in WRITES:
            for path in args[:WRITES[event]]:
                self._check(path)


def isolate(root: Path) -> HomeWrites:
    """Point every home-relative location into a temporary home; start watching the real one."""
    real_home = Path.home()
    rlaif_home = Path(os.environ.get("RLAIF_HOME", real_home / ".cache" / "rlaif")).expanduser()
    models = rlaif_home / "models"
    models.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="rlaif-tests-home-"))
    atexit.register(shutil.rmtree, home, True)  # the link to the models goes, not what it points at
    (home / ".cache" / "rlaif").mkdir(parents=True)
    (home / ".cache" / "rlaif" / "models").symlink_to(models.resolve())
    os.environ.update({
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "HF_HOME": str(home / ".cache" / "huggingface"),
        "RLAIF_HOME": str(home / ".cache" / "rlaif"),
        "PREFECT_HOME": str(home / ".prefect"),
    })
    for name in ("PREFECT_API_URL", "HF_DATASETS_CACHE", "HF_HUB_CACHE", "VLLM_CACHE_ROOT", "MPLCONFIGDIR",
                 "TRANSFORMERS_CACHE", "PREFECT_PROFILES_PATH"):
        os.environ.pop(name, None)
    watch = HomeWrites(real_home, [models, root, Path(tempfile.gettempdir())])
    sys.addaudithook(watch)
    return watch
