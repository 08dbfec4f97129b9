"""The command line: `rlaif` and its console (progress, summaries, errors)."""
