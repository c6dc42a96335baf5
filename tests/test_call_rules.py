"""Call rules without sockets: any request gets exactly one response with a documented code, never
an exception (MethodRegistry); the caller's gate (limits, rate, wait or refuse)."""

from __future__ import annotations

import threading
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobrelay.actors.call_gate import CallGate
from jobrelay.common.calls import MethodRegistry
from jobrelay.protocol.calls import CallCode, CallRejected, CallThrottled, CallTimeout
from jobrelay.protocol.messages import Request

CODES = {c.value for c in CallCode}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


class Pair(msgspec.Struct):
    a: int
    b: int


def registry() -> MethodRegistry:
    reg = MethodRegistry("test")
    reg.register("add", lambda p: p.a + p.b, params=Pair, result=int)
    reg.register("wrong_result", lambda p: "text", result=int)
    reg.register("fails", lambda p: 1 / 0)
    reg.register("refuses", lambda p: (_ for _ in ()).throw(CallRejected(CallCode.NOT_FOUND, "nothing")))
    reg.register("echo", lambda p: p)
    return reg


REG = registry()


@given(method=st.sampled_from(["add", "wrong_result", "fails", "refuses", "echo", "missing"]), params=JSON)
def test_every_request_gets_one_response_with_a_documented_code(method: str, params: Any) -> None:
    response = REG.answer(Request(id="c1", method=method, params=params), "w1")
    assert response.id == "c1"
    if response.ok:
        assert method in ("add", "echo")
    else:
        assert response.code in CODES and response.error


def test_codes_for_each_way_a_call_fails() -> None:
    def code(method: str, params: Any = None) -> str:
        return REG.answer(Request(id="c", method=method, params=params)).code

    assert REG.answer(Request(id="c", method="add", params={"a": 1, "b": 2})).result == 3
    assert code("add", {"a": "x", "b": 2}) == "invalid_params"
    assert code("missing") == "unknown_method"
    assert code("fails") == "handler_failed"
    assert code("wrong_result") == "handler_failed"
    assert code("refuses") == "not_found"


def test_overloaded_when_too_many_run() -> None:
    reg = MethodRegistry("test", max_running=1)
    inside, go = threading.Event(), threading.Event()
    reg.register("block", lambda p: inside.set() or go.wait(5))
    first = threading.Thread(target=reg.answer, args=(Request(id="1", method="block"),))
    first.start()
    assert inside.wait(5)
    assert reg.answer(Request(id="2", method="block")).code == "overloaded"
    go.set()
    first.join(5)
    assert reg.answer(Request(id="3", method="block")).ok


def test_gate_limits_in_flight_and_rate() -> None:
    now = [0.0]
    seen: list[str] = []
    gate = CallGate(2, rate=None, burst=1, on_limited=seen.append, clock=lambda: now[0])
    gate.acquire(wait=False, timeout=1)
    gate.acquire(wait=False, timeout=1)
    with pytest.raises(CallThrottled, match="in flight"):
        gate.acquire(wait=False, timeout=1)
    gate.release()
    gate.acquire(wait=False, timeout=1)
    assert seen == ["calls_throttled"] and gate.in_flight == 2

    rated = CallGate(100, rate=1.0, burst=1, clock=lambda: now[0])
    rated.acquire(wait=False, timeout=1)
    with pytest.raises(CallThrottled, match="rate"):
        rated.acquire(wait=False, timeout=1)
    now[0] = 1.0
    rated.acquire(wait=False, timeout=1)  # a token came


def test_gate_waits_then_times_out() -> None:
    gate = CallGate(1, rate=None, burst=1)
    gate.acquire(wait=True, timeout=1)
    threading.Timer(0.1, gate.release).start()
    gate.acquire(wait=True, timeout=2)  # woken by the release
    with pytest.raises(CallTimeout):
        gate.acquire(wait=True, timeout=0.1)
