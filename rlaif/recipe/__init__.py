"""A recipe: its model (what a YAML file may say), the preflight that checks it before any compute, and the dry run that prices it."""
