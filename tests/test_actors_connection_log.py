"""actors/connection_log.py: the line a closed session leaves (one space between its parts,
whatever blanks a peer's close reason brings) and which closes are refusals of an identity."""

from __future__ import annotations

import pytest
from loguru import logger

from jobrelay.actors.connection_log import auth_refused, log_closed
from jobrelay.protocol import events as ev
from jobrelay.protocol.errors import ErrorCode


@pytest.mark.parametrize(
    ("code", "detail", "left_out", "expected"),
    [
        (None, " closed by peer", "", "connection closed (facilitator ended it): closed by peer"),
        (None, "by peer (1000 )", "", "connection closed (facilitator ended it): by peer (1000 )"),
        (ErrorCode.INTERNAL, "", "", "connection closed (facilitator ended it): internal"),
        (None, "", "2 refusals", "connection closed (facilitator ended it): (not logged: 2 refusals)"),
        (None, "\tgone \n", "", "connection closed (facilitator ended it): gone"),
    ],
)
def test_a_closed_line_has_one_space_between_parts(
    code: ErrorCode | None, detail: str, left_out: str, expected: str
) -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, format="{message}", level="DEBUG")
    try:
        log_closed(logger, ev.Closed(code=code, detail=detail, by_peer=True), left_out)
    finally:
        logger.remove(sink)
    assert [line.rstrip("\n") for line in lines] == [expected]


@pytest.mark.parametrize(
    ("code", "by_peer", "refused"),
    [
        (ErrorCode.UNKNOWN_KEY, True, True),
        (ErrorCode.WRONG_KEY, True, True),
        (ErrorCode.BAD_SIGNATURE, True, True),
        (ErrorCode.STALE_TIMESTAMP, True, True),  # a clock to fix: retrying repeats it
        (ErrorCode.REPLAYED_NONCE, True, False),  # a fluke: the next try has a new nonce
        (ErrorCode.WRONG_KEY, False, True),  # we refused the facilitator's key
        (ErrorCode.UNKNOWN_KEY, False, False),
        (ErrorCode.INTERNAL, True, False),
        (None, True, False),
    ],
)
def test_which_closes_stop_the_worker(code: ErrorCode | None, by_peer: bool, refused: bool) -> None:
    assert auth_refused(ev.Closed(code=code, detail="", by_peer=by_peer)) is refused
