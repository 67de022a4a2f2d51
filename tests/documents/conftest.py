"""Fixtures for the SSM document tests: a moto server, sandbox instances, the documents."""

from tests.sandbox.fixtures import *  # noqa: F403
