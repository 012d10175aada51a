"""Fixtures shared by the integration tests."""

from __future__ import annotations

from ray_support import ray_session

__all__ = ["ray_session"]
