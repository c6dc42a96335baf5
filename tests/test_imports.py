"""The package faces are lazy and the layers hold: what users import is what gets loaded."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

HEAVY = ("pykka", "sqlite_utils", "websockets", "websocket", "sqlite3", "prometheus_client")
PACKAGES = (
    "jobrelay",
    "jobrelay.protocol",
    "jobrelay.storage",
    "jobrelay.actors",
    "jobrelay.facilitator",
    "jobrelay.testing",
)


def loaded_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return set(out.split())


def test_importing_the_protocol_loads_no_actor_database_or_websocket_library() -> None:
    loaded = loaded_after(
        "import jobrelay.protocol\n"
        "from jobrelay.protocol import WorkerSession, SessionDriver, LinkConfig, worker_codec\n"
    )
    assert "jobrelay" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_importing_storage_loads_no_actor_or_websocket_library() -> None:
    loaded = loaded_after("import jobrelay.storage\nfrom jobrelay.storage import Outbox, open_database\n")
    assert "sqlite_utils" in loaded  # storage itself is what was asked for
    assert not loaded & {"pykka", "websockets", "websocket"}, sorted(loaded)


def test_the_top_level_face_loads_nothing_until_a_name_is_used() -> None:
    assert not loaded_after("import jobrelay\n") & set(HEAVY)
    # Using one name loads what it needs, and only the worker's side of the house.
    loaded = loaded_after("from jobrelay import WorkerConfig\n")
    assert not loaded & {"pykka", "websockets", "sqlite_utils"}, sorted(loaded)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves_to_what_its_module_defines(package: str) -> None:
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert names == sorted(set(names), key=names.index), "duplicates in __all__"
    for name in names:
        if name == "__version__":
            continue
        value = getattr(module, name)
        owner = importlib.import_module(module._EXPORTS[name])
        assert value is getattr(owner, name), f"{package}.{name}"
        assert name in dir(module)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        module.NoSuchName  # noqa: B018


def test_the_public_face_names_the_main_api() -> None:
    import jobrelay

    for name in ("start_worker", "WorkerConfig", "start_facilitator", "FacilitatorConfig", "ConfigError"):
        assert name in jobrelay.__all__
    assert jobrelay.ConfigError is importlib.import_module("jobrelay.protocol").ConfigError


def test_celery_is_loaded_only_by_its_backend() -> None:
    # A worker, its CLI and the backend's package face run without Celery installed.
    loaded = loaded_after(
        "import jobrelay.actors.celery_backend\nfrom jobrelay.actors import start_worker\n"
        "import jobrelay.cli.worker\nimport jobrelay.cli.demo\n"
    )
    assert not loaded & {"celery", "kombu", "billiard", "redis"}, sorted(loaded)
