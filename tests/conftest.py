"""Shared test set-up: hypothesis profiles and shared fixtures.

Profiles: ``dev`` (default, quick) and ``ci`` (more examples; selected by HYPOTHESIS_PROFILE=ci,
which .ci/run sets). Tests that need a minimum number of examples set it themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings
from loguru import logger

import jobrelay
from tests.alone import held

if TYPE_CHECKING:
    from jobrelay.facilitator import Facilitator

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# The library is quiet by default (jobrelay/__init__ disables its logger); tests read its lines.
assert jobrelay.__name__ == "jobrelay"  # imported first, so its disable() runs before this enable()
logger.enable("jobrelay")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "alone: run while no other test runs (tests/alone.py)")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Each test's whole run (set-up, call, tear-down) holds the suite's lock: shared, or alone.
    Outermost (tryfirst), so pytest-timeout's timer, which starts inside, does not count the
    wait for the other process's test."""
    worker_basetemp = item.config.option.basetemp  # pytest-xdist gives each worker a folder of one
    if not os.environ.get("PYTEST_XDIST_WORKER") or not worker_basetemp:  # one process: one at a time
        yield
        return
    with held(Path(worker_basetemp).parent, exclusive=item.get_closest_marker("alone") is not None):
        yield


@pytest.fixture
def fac(tmp_path: Path) -> Iterator[Facilitator]:
    """A running reference facilitator that knows the test workers' keys, stopped afterwards."""
    from tests.facilitator_client import make_facilitator

    facilitator = make_facilitator(tmp_path)
    try:
        yield facilitator
    finally:
        facilitator.stop()
