"""One module per judge kind; defining a `JudgeKind` subclass with a `name` registers it, and the
registry (judges/registry.py) imports every module here, so a new kind is one file plus its template."""
