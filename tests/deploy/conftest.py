"""Fixtures: see tests/fixtures.py (test_metric_names.py starts a real gateway)."""

from tests.fixtures import *  # noqa: F403
