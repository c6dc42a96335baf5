# How many connections the facilitator can hold: the soft open-file limit raised to the hard one
# at start, a reserve kept for everything that is not a connection, and the rest split between
# unauthenticated connections (at most half) and workers, so the listener never fails to accept
# for want of a descriptor.
from __future__ import annotations

import resource
from typing import TYPE_CHECKING, Final, NamedTuple

from loguru import logger

from jobrelay.facilitator.config import FacilitatorConfig
from jobrelay.protocol.errors import ConfigError

if TYPE_CHECKING:
    from jobrelay.facilitator.hub import ConnectionHub

__all__ = ["Capacity", "capacity", "fit_to_descriptors", "raise_open_file_limit", "warn_if_small"]

# Descriptors kept for the database, logs, the listeners and the HTTP API's connections (at most
# jobrelay.common.http.MAX_CONNECTIONS).
FD_RESERVE: Final = 512
MIN_CONNECTIONS: Final = 16  # a facilitator with room for fewer refuses to start
QUIET_CAPACITY: Final = 10_000  # room for this many workers is not worth a warning at start


class Capacity(NamedTuple):
    """Connections the facilitator holds at most."""

    workers: int
    unauthenticated: int


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; the descriptors left for connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # pragma: no cover - the hard limit is ours to take
            logger.warning("facilitator: could not raise the open-file limit to {}: {}", hard, exc)
    return (1 << 30 if soft == resource.RLIM_INFINITY else soft) - FD_RESERVE


def capacity(config: FacilitatorConfig, usable: int) -> Capacity:
    """The connection limits that ``usable`` descriptors allow: unauthenticated connections get
    at most half, workers the rest.

    Raises:
        ConfigError: fewer than MIN_CONNECTIONS connections would fit.
    """
    if usable < MIN_CONNECTIONS:
        raise ConfigError(
            f"FacilitatorConfig.max_workers: the open-file limit leaves descriptors for "
            f"{max(usable, 0)} connections ({FD_RESERVE} are kept for the database, the HTTP "
            f"API and logs); raise it (ulimit -n, LimitNOFILE=) to at least "
            f"{FD_RESERVE + MIN_CONNECTIONS}"
        )
    unauthenticated = min(config.max_unauthenticated, usable // 2)
    return Capacity(min(config.max_workers, usable - unauthenticated), unauthenticated)


def warn_if_small(config: FacilitatorConfig, workers: int) -> None:
    """One warning at start when the open-file limit holds fewer workers than asked for."""
    if workers < min(config.max_workers, QUIET_CAPACITY):
        logger.warning(
            "facilitator: the open-file limit allows about {} workers (max_workers {}); raise it "
            "(ulimit -n, LimitNOFILE=) to hold more",
            workers,
            config.max_workers,
        )


def fit_to_descriptors(config: FacilitatorConfig, hub: ConnectionHub, usable: int) -> int:
    """Size the hub's connection limits to ``usable`` descriptors (see ``capacity``); returns
    how many workers it holds."""
    limits = capacity(config, usable)
    hub.max_workers = limits.workers
    hub.gate.max_unauthenticated = limits.unauthenticated
    hub.gate.max_connections = limits.workers + limits.unauthenticated
    return limits.workers
