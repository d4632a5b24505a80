"""The package version: one definition (pyproject.toml reads it; importing it imports nothing else)."""

__version__ = "0.1.0"
