"""Periodic checkpoints keep to their share of the service's time, however large the state."""

from __future__ import annotations

from stream.service import checkpoint_due


def test_quick_checkpoints_come_every_interval():
    assert not checkpoint_due(29.9, interval_s=30.0, last_took_s=0.3, share=0.1)
    assert checkpoint_due(30.0, interval_s=30.0, last_took_s=0.3, share=0.1)


def test_a_slow_checkpoint_puts_the_next_further_away():
    # A 1M-item partition's snapshot took about 30 s: at a share of 0.1 the next comes 300 s on,
    # not 30 s on (which would hold the loop half of the time).
    assert not checkpoint_due(299.0, interval_s=30.0, last_took_s=30.0, share=0.1)
    assert checkpoint_due(300.0, interval_s=30.0, last_took_s=30.0, share=0.1)


def test_a_share_of_one_lets_checkpoints_follow_each_other_as_fast_as_they_are_written():
    assert checkpoint_due(30.0, interval_s=30.0, last_took_s=30.0, share=1.0)
    assert not checkpoint_due(29.0, interval_s=1.0, last_took_s=30.0, share=1.0)
