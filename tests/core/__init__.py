"""Tests of rlaif/core/."""
