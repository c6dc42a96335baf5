"""Child process for tests/test_storage_crash.py: writes forever, printing what was committed.

Usage: python storage_crash_child.py outbox|inbox DB SEED

Every line is printed (and flushed) only after the store call that it reports returned, i.e.
after its commit. The parent SIGKILLs this process at random moments and checks that every
printed line is reflected in the database.
"""

from __future__ import annotations

import random
import sys

from jobrelay.storage import AcceptResult, Inbox, Outbox, open_database


def payload_for(seq: int, salt: int) -> bytes:
    return f"payload-{seq}-{salt}".encode() * (1 + seq % 7)


def run_outbox(path: str, rng: random.Random) -> None:
    db = open_database(path, durability="full")
    box = Outbox(db, max_rows=10_000_000, max_bytes=1 << 40)
    print("R", box.epoch, flush=True)
    printed_max = box.last_seq
    while True:
        roll = rng.random()
        if roll < 0.5:
            salt = rng.randrange(1 << 30)
            payload = payload_for(printed_max + 1, salt)
            seq = box.append("k", payload)
            print("A", seq, payload.hex(), flush=True)
            printed_max = seq
        elif roll < 0.85:
            n = rng.randint(2, 50)
            salt = rng.randrange(1 << 30)
            batch = [("k", payload_for(printed_max + i, salt)) for i in range(1, n + 1)]
            seqs = box.append_many(batch)
            for seq, (_, payload) in zip(seqs, batch, strict=True):
                print("A", seq, payload.hex(), flush=True)
            printed_max = seqs[-1]
        else:
            low = box.last_acked
            upto = rng.randint(low, box.last_seq)
            box.ack(upto)
            print("K", upto, flush=True)


def run_inbox(path: str, rng: random.Random) -> None:
    db = open_database(path, durability="full")
    inbox = Inbox(db)
    inbox.start_epoch("fac", "epoch-1")
    print("R", inbox.hwm("fac"), flush=True)
    while True:
        hwm = inbox.hwm("fac")
        roll = rng.random()
        if roll < 0.8:
            # A batch as it may arrive after a reconnect: some replayed duplicates, then new.
            start = max(1, hwm + 1 - rng.randint(0, 3))
            items = [(s, "job_request", f"m{s}".encode()) for s in range(start, hwm + rng.randint(2, 30))]
            results = inbox.accept_many("fac", items)
            for (seq, _, _), result in zip(items, results, strict=True):
                if result is AcceptResult.ACCEPTED:
                    print("A", seq, flush=True)  # the point where the receiver acks seq
        elif hwm:
            upto = rng.randint(1, hwm)
            inbox.mark_consumed("fac", upto)
            print("C", upto, flush=True)


def main() -> None:
    mode, path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    if mode == "outbox":
        run_outbox(path, rng)
    else:
        run_inbox(path, rng)


if __name__ == "__main__":
    main()
