"""Which process of a multi-process training launch this is (`accelerate launch`, `torchrun`).

Every process of a launch runs `rlaif train` whole: each loads the model and trains its share of
every batch, and the trainer (accelerate) joins them. Only the first process of the launch holds
the run lock, records the run with Prefect, and writes the stage's marker, so a run directory on
a shared filesystem is written once. The launchers say who is who through the environment
(RANK, WORLD_SIZE); a plain `rlaif train` has neither and is the only, main, process.
"""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0
