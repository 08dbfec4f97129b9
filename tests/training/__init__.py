"""Tests of rlaif/training/."""
