"""Placer: a job goes to a worker of its kind with the most credit left, never beyond a worker's
credit, also when a worker of several kinds is picked through several kinds' heaps."""

from __future__ import annotations

from typing import Any, cast

from jobrelay.facilitator.placement import Candidates, Offer, Placer


class Counts:
    """The part of StoreState a Placer uses: unfinished jobs per worker, and per worker and kind."""

    def __init__(self, outstanding: dict[str, int] | None = None) -> None:
        self.outstanding = dict(outstanding or {})
        self.outstanding_kind: dict[tuple[str, str], int] = {}

    def add_outstanding(self, worker_id: str, delta: int, kind: str) -> None:
        self.outstanding[worker_id] = self.outstanding.get(worker_id, 0) + delta
        self.outstanding_kind[(worker_id, kind)] = self.outstanding_kind.get((worker_id, kind), 0) + delta


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


def test_a_kind_with_its_own_credit_gets_no_more_than_that_and_other_kinds_use_the_rest() -> None:
    counts = Counts()
    # w1: 5 in all, of which at most 2 encode (encode=2 concurrency, no prefetch); w2 runs encode.
    w1 = Offer("w1", 5, {"encode": 2})
    p = placer(counts, Candidates({"encode": [w1, Offer("w2", 3)], "thumb": [w1]}))
    encodes = [p.pick("encode") for _ in range(6)]
    assert encodes.count("w1") == 2 and encodes.count("w2") == 3 and encodes[-1] == ""
    assert [p.pick("thumb") for _ in range(4)] == ["w1", "w1", "w1", ""]  # 5 - 2 encode
    assert counts.outstanding_kind[("w1", "encode")] == 2 and counts.outstanding["w1"] == 5
