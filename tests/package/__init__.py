"""Tests of the package as a whole: its shape and layering, and the quickstart end to end."""
