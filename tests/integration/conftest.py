"""Fixtures: see tests/fixtures.py."""

from tests.fixtures import *  # noqa: F403
