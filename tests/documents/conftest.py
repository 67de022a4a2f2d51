"""Fixtures for the SSM document tests: a moto server, sandbox instances, the documents."""

from tests.fixtures import *  # noqa: F403
