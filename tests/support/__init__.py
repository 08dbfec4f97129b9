"""What the tests share: the isolated home, models and small helpers, the fake endpoints (all built on
rlaif.rehearsal.openai_server), and the probe that runs `rlaif` with a look inside its trainer."""
