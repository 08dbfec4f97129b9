"""Tests of rlaif/preferences/."""
