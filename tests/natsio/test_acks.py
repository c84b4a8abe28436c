"""The one classification of a publish's answer (`natsio.acks.classify`), code by code."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from natsio.acks import Outcome, classify


def _answer(data: bytes = b"", status: str | None = None) -> Msg:
    headers = {"Status": status} if status else None
    return Msg(None, subject="_INBOX.x.1.ack", data=data, headers=headers)  # type: ignore[arg-type]


def _error(code: int, err_code: int) -> bytes:
    return b'{"error":{"code":%d,"err_code":%d,"description":"d"}}' % (code, err_code)


@pytest.mark.parametrize(
    ("answer", "connected", "outcome"),
    [
        (_answer(b'{"stream":"s","seq":7}'), True, Outcome.STORED),
        (_answer(b'{"stream":"s","seq":7,"duplicate":true}'), True, Outcome.STORED),
        (_answer(status="503"), True, Outcome.NO_STREAM),
        # During a reconnect a "no responders" says nothing about the stream (the scheduler
        # used to fail the item as an unknown model).
        (_answer(status="503"), False, Outcome.RETRY),
        (_answer(status="408"), True, Outcome.RETRY),
        (_answer(), True, Outcome.RETRY),
        (_answer(b"not json"), True, Outcome.RETRY),
        (_answer(_error(503, 10077)), True, Outcome.FULL),  # maximum messages exceeded
        (_answer(_error(503, 10078)), True, Outcome.FULL),  # maximum bytes exceeded
        (_answer(_error(400, 10054)), True, Outcome.TOO_LARGE),
        (_answer(_error(503, 10008)), True, Outcome.RETRY),  # JetStream unavailable for now
        (_answer(_error(400, 10060)), True, Outcome.REFUSED),  # expected stream mismatch
    ],
)
def test_each_answer_has_one_outcome(answer: Msg, connected: bool, outcome: Outcome) -> None:
    assert classify(answer, connected=connected)[0] is outcome


def test_the_puback_comes_with_its_outcome() -> None:
    outcome, ack = classify(_answer(b'{"stream":"s","seq":7,"duplicate":true}'))
    assert outcome is Outcome.STORED
    assert ack is not None
    assert (ack.stream, ack.seq, ack.duplicate) == ("s", 7, True)
    outcome, ack = classify(_answer(_error(400, 10054)))
    assert ack is not None
    assert ack.error is not None
    assert ack.error.err_code == 10054


def test_only_a_full_stream_and_a_lost_publish_are_worth_publishing_again() -> None:
    assert {o for o in Outcome if o.later} == {Outcome.RETRY, Outcome.FULL}
