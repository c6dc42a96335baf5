"""``python -m jobrelay``: the same as the ``jobrelay`` command."""

import sys

from jobrelay.cli import main

if __name__ == "__main__":
    sys.exit(main())
