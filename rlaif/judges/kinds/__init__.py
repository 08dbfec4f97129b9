"""One module per judge kind. Each defines `KINDS`, a list of kind instances; the registry
(judges/registry.py) finds them all, so a new kind is one file here plus its template."""
