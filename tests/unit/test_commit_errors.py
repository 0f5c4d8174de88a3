"""Which failed offset commits the service rides out (the next commit carries the same offsets)."""

from __future__ import annotations

from kafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NotCoordinatorError,
    ProducerFencedError,
)

from stream.service import _retriable


def test_lost_connections_timeouts_moved_coordinators_and_stale_generations_are_ridden_out():
    for exc in (
        KafkaConnectionError("111 ECONNREFUSED"),
        KafkaTimeoutError(),
        NotCoordinatorError(),
        CommitFailedError("the consumer was kicked out of the group"),
    ):
        assert _retriable(exc), exc


def test_verdicts_are_not_retried():
    for exc in (ProducerFencedError(), IllegalStateError("bad")):
        assert not _retriable(exc), exc
