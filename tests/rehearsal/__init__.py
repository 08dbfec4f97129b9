"""Tests of rlaif/rehearsal/."""
