"""Fixtures for tests against a real Apache Kafka broker.

One local broker serves the whole session unless ``MQCAST_BOOTSTRAP`` names one already running.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from stream.broker import BrokerConfig, LocalBroker


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker | None]:
    """The session's local broker, or None when MQCAST_BOOTSTRAP points at an external one."""
    if os.environ.get("MQCAST_BOOTSTRAP"):
        yield None
        return
    b = LocalBroker(BrokerConfig(heap="768m"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def bootstrap(broker: LocalBroker | None) -> str:
    return os.environ.get("MQCAST_BOOTSTRAP") or broker.bootstrap  # type: ignore[union-attr]


@pytest.fixture
def local_broker(broker: LocalBroker | None) -> LocalBroker:
    """For tests that stop or restart the broker: only a broker this session started will do."""
    if broker is None:
        pytest.skip("MQCAST_BOOTSTRAP points at an external broker; this test restarts its own")
    return broker


@pytest.fixture
def topic_factory(bootstrap: str) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics for one test; they are deleted afterwards.

    Each call opens its own admin client: a test may restart the broker in between.
    """
    made: list[str] = []

    def make(partitions: int = 1, prefix: str = "t", configs: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="mqcast-tests")
        try:
            admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})])
        finally:
            admin.close()
        made.append(name)
        return name

    yield make
    if made:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="mqcast-tests")
        try:
            admin.delete_topics(made)
        finally:
            admin.close()


@pytest.fixture
def topics(topic_factory: Callable[..., str]) -> dict[str, str]:
    """A fresh sales, forecasts (two partitions each) and dead-letter topic for one test."""
    return {
        "sales": topic_factory(partitions=2),
        "forecasts": topic_factory(partitions=2),
        "dlq": topic_factory(),
    }
