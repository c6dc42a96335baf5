# Errors of the jobrelay command. Invariant: a UsageError's message is one line that names the
# setting and its source; main() prints it as "jobrelay: error: <message>" and exits with 2.
from __future__ import annotations

from jobrelay.protocol.errors import JobrelayError

__all__ = ["EXIT_AUTH", "EXIT_FORCED", "EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE", "UsageError"]

EXIT_OK = 0
EXIT_RUNTIME = 1  # the command ran and failed (lost connection for good, demo check failed, ...)
EXIT_USAGE = 2  # bad flags, environment, config file or values
EXIT_AUTH = 3  # the worker's identity (or the facilitator's) was refused: fix a key, retrying cannot
EXIT_FORCED = 130  # a second SIGINT/SIGTERM: stopped at once (durable data is kept)


class UsageError(JobrelayError):
    """A bad flag, environment variable, config file value or argument (exit code 2)."""
