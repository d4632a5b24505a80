"""Shared test setup: deterministic, single-threaded-friendly torch."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("ENCNET_CACHE", os.path.join(os.path.dirname(__file__), ".cache-unused"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
