"""The installed package: one import name, the public API re-exported, typed."""

from __future__ import annotations

import importlib
from pathlib import Path

import jobrelay


def test_public_api_is_importable_from_jobrelay() -> None:
    from jobrelay import FacilitatorConfig, WorkerConfig, start_facilitator, start_worker

    assert callable(start_worker) and callable(start_facilitator)
    assert WorkerConfig.__module__ == "jobrelay.actors.config"
    assert FacilitatorConfig.__module__ == "jobrelay.facilitator.config"
    for name in jobrelay.__all__:
        assert getattr(jobrelay, name) is not None, name


def test_subpackages_resolve_under_the_jobrelay_name() -> None:
    for name in ("jobrelay.protocol", "jobrelay.storage", "jobrelay.actors", "jobrelay.cli"):
        module = importlib.import_module(name)
        assert module.__name__ == name
    assert (Path(jobrelay.__file__).parent / "py.typed").exists()
