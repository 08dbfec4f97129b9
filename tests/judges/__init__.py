"""Tests of rlaif/judges/."""
