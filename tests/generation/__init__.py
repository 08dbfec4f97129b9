"""Tests of rlaif/generation/."""
