"""Tests of rlaif/engines/."""
