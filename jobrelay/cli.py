"""The ``jobrelay`` command (placeholder until the CLI lands)."""

import sys

from jobrelay import __version__


def main(argv: list[str] | None = None) -> int:
    print(f"jobrelay {__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
