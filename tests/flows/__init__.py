"""Tests of rlaif/flows/."""
