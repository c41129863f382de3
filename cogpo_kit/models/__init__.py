"""Model specs and loading."""
