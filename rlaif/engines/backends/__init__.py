"""The built-in backends, one module each; defining a `Backend` subclass registers it
(engines/backend.py), so a new backend is one file here, or anywhere that is imported."""
