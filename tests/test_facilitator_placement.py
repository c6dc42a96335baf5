"""Placer: a job goes to a worker of its kind with the most credit left, never beyond a worker's
credit, also when a worker of several kinds is picked through several kinds' heaps."""

from __future__ import annotations

from typing import Any, cast

from jobrelay.facilitator.placement import Candidates, Offer, Placer


class Counts:
    """The part of StoreState a Placer uses: unfinished jobs per worker."""

    def __init__(self, outstanding: dict[str, int] | None = None) -> None:
        self.outstanding = dict(outstanding or {})

    def add_outstanding(self, worker_id: str, delta: int) -> None:
        self.outstanding[worker_id] = self.outstanding.get(worker_id, 0) + delta


def placer(counts: Counts, candidates: Candidates) -> Placer:
    return Placer(cast(Any, counts), candidates)


def test_a_worker_of_two_kinds_never_gets_more_than_its_credit() -> None:
    counts = Counts({"w1": 1})
    both = Offer("w1", 3)
    p = placer(counts, Candidates({"a": [both, Offer("w2", 1)], "b": [both]}))
    picks = [(kind, p.pick(kind)) for kind in "abababab"]
    assert counts.outstanding == {"w1": 3, "w2": 1}
    # w1 had 2 left (the most, so it goes first), w2 1; after that no kind finds room.
    assert picks == [("a", "w1"), ("b", "w1"), ("a", "w2")] + [(k, "") for k in "babab"]


def test_most_credit_left_wins_and_unknown_kinds_get_no_worker() -> None:
    counts = Counts({"busy": 3})
    p = placer(counts, Candidates({"k": [Offer("busy", 4), Offer("idle", 2)]}))
    assert [p.pick("k") for _ in range(4)] == ["idle", "busy", "idle", ""]
    assert p.pick("nobody-runs-this") == ""


def test_a_worker_without_kinds_or_limit_takes_any_kind() -> None:
    counts = Counts()
    p = placer(counts, Candidates({}, [Offer("any", None)]))
    assert [p.pick(k) for k in ("x", "y", "x")] == ["any"] * 3
    assert counts.outstanding == {"any": 3}
