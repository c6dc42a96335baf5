"""The installed package: one import name, the public API re-exported, typed."""

from __future__ import annotations

import importlib
from pathlib import Path

import jobrelay


def test_public_api_is_importable_from_jobrelay() -> None:
    from jobrelay import FacilitatorConfig, WorkerConfig, start_facilitator, start_worker

    assert callable(start_worker) and callable(start_facilitator)
    # The public names, not where they happen to be defined: the same objects under the package
    # face and under their subpackage's face, each listed in its __all__.
    import jobrelay.actors
    import jobrelay.facilitator

    assert {"WorkerConfig", "FacilitatorConfig", "start_worker", "start_facilitator"} <= set(jobrelay.__all__)
    assert WorkerConfig is jobrelay.actors.WorkerConfig and "WorkerConfig" in jobrelay.actors.__all__
    assert FacilitatorConfig is jobrelay.facilitator.FacilitatorConfig
    assert "FacilitatorConfig" in jobrelay.facilitator.__all__
    assert (WorkerConfig.__name__, FacilitatorConfig.__name__) == ("WorkerConfig", "FacilitatorConfig")
    for name in jobrelay.__all__:
        assert getattr(jobrelay, name) is not None, name


def test_subpackages_resolve_under_the_jobrelay_name() -> None:
    for name in ("jobrelay.protocol", "jobrelay.storage", "jobrelay.actors", "jobrelay.cli"):
        module = importlib.import_module(name)
        assert module.__name__ == name
    assert (Path(jobrelay.__file__).parent / "py.typed").exists()
