# Counters that outlive the process: how many messages a worker replayed, duplicates it dropped,
# reconnects, ... since its database was created (schema v4, table `totals`). Invariants: add()
# is one transaction (a crash keeps all of a flush or none of it); names are free-form and
# unknown ones are kept, so a newer worker's totals survive an older one's reads.
from __future__ import annotations

from collections.abc import Mapping

from jobrelay.storage.database import Database

__all__ = ["add_totals", "read_totals"]


def add_totals(db: Database, counts: Mapping[str, int]) -> None:
    """Add ``counts`` to the stored totals.

    Raises:
        StorageError: The write failed.
    """
    rows = [(name, n) for name, n in counts.items() if n]
    if not rows:
        return
    with db.transaction("add totals") as conn:
        conn.executemany(
            "INSERT INTO totals (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            rows,
        )


def read_totals(db: Database) -> dict[str, int]:
    """Every stored total, by name.

    Raises:
        StorageError: The read failed.
    """
    return {str(name): int(n) for name, n in db.query("SELECT name, value FROM totals ORDER BY name")}
