"""The ``jobrelay`` command: ``jobrelay.cli:main`` (see docs/CLI.md)."""

from jobrelay.cli.main import main

__all__ = ["main"]
