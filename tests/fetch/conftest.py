"""Fetch-test fixtures: the shared loopback HTTP server (tests/loopback.py)."""

from __future__ import annotations

from loopback import http_server  # noqa: F401  (the fixture, for the tests here)
