"""Create the service's topics when they do not exist yet."""

from __future__ import annotations

from dataclasses import dataclass, field

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError


@dataclass(frozen=True)
class TopicSpec:
    """A topic to make sure of."""

    name: str
    partitions: int = 1
    configs: dict[str, str] = field(default_factory=dict)


def service_topics(
    sales: str, forecasts: str, dead_letters: str, partitions: int, items: str | None = None
) -> list[TopicSpec]:
    """The topics ``mqcast serve`` reads and writes, with sensible settings."""
    specs = [
        TopicSpec(sales, partitions),
        # Forecasts are keyed by item, co-partitioned with the input so a client can scale alike.
        TopicSpec(forecasts, partitions),
        TopicSpec(dead_letters, 1),
    ]
    if items:
        # Item attributes: only the latest value of a key matters.
        specs.append(TopicSpec(items, partitions, {"cleanup.policy": "compact"}))
    return specs


def ensure_topics(bootstrap: str, specs: list[TopicSpec], timeout_ms: int = 30_000) -> list[str]:
    """Create the missing topics (replication factor 1); returns the names created."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="mqcast-admin", request_timeout_ms=timeout_ms
    )
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, topic_configs=dict(s.configs))
            for s in specs
            if s.name not in existing
        ]
        created = []
        for topic in new:
            try:
                admin.create_topics([topic], timeout_ms=timeout_ms)
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()
