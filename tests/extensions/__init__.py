"""A judge kind and a backend defined outside the package, each in one file (the kind with its
template beside it): what a user adds without editing rlaif/ (tests/test_extensions.py runs them)."""
