"""Create the service's topics when they do not exist yet."""

from __future__ import annotations

from dataclasses import dataclass, field

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError


@dataclass(frozen=True)
class TopicSpec:
    """A topic to make sure of."""

    name: str
    partitions: int = 1
    configs: dict[str, str] = field(default_factory=dict)


# A broker maps a segment's offset and time indexes, each preallocated at segment.index.bytes, only
# when they take their first entry (the segment's second append), and that takes longer the larger
# they are: at the default 10 MiB, 52-72 ms of the broker's time for the second append to each
# partition of a fresh forecast topic under the latency bench's load (its request log), against
# 9-13 ms at 1 MiB and 0.4-3 ms for the other appends. Four partitions of that came to 150-240 ms
# in the first forecasts' acknowledgement, and a partition would pay it again after each segment
# roll. At 1 MiB the time index holds 87k entries, at most one per 4 KiB appended, so a segment
# rolls at about 340 MiB at the earliest, and at 1 GiB as usual wherever appends exceed 12 KiB, as
# a bucket's forecast batches do.
FORECAST_TOPIC_CONFIGS = {"segment.index.bytes": str(1 << 20)}


def service_topics(
    sales: str, forecasts: str, dead_letters: str, partitions: int, items: str | None = None
) -> list[TopicSpec]:
    """The topics ``mqcast serve`` reads and writes, with sensible settings."""
    specs = [
        TopicSpec(sales, partitions),
        # Forecasts are keyed by item, co-partitioned with the input so a client can scale alike.
        TopicSpec(forecasts, partitions, dict(FORECAST_TOPIC_CONFIGS)),
        TopicSpec(dead_letters, 1),
    ]
    if items:
        # Item attributes: only the latest value of a key matters.
        specs.append(TopicSpec(items, partitions, {"cleanup.policy": "compact"}))
    return specs


def _admin(bootstrap: str, timeout_ms: int) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="mqcast-admin", request_timeout_ms=timeout_ms
    )


def ensure_topics(bootstrap: str, specs: list[TopicSpec], timeout_ms: int = 30_000) -> list[str]:
    """Create the missing topics (replication factor 1); returns the names created."""
    admin = _admin(bootstrap, timeout_ms)
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


@dataclass(frozen=True)
class SettingDrift:
    """A topic that existed before with a setting other than the one mqcast creates it with."""

    topic: str
    key: str
    wanted: str
    found: str

    def advice(self, bootstrap: str) -> str:
        """What to tell the operator, with the command that changes it."""
        return (
            f"topic {self.topic!r} exists with {self.key}={self.found}; mqcast creates it with "
            f"{self.key}={self.wanted} (README, 'Operating it'). To change it: kafka-configs.sh "
            f"--bootstrap-server {bootstrap} --alter --entity-type topics --entity-name {self.topic} "
            f"--add-config {self.key}={self.wanted}"
        )


def setting_drift(bootstrap: str, specs: list[TopicSpec], timeout_ms: int = 30_000) -> list[SettingDrift]:
    """The settings of ``specs`` that their topics, where they exist, hold otherwise (topics made
    before mqcast asked for the setting, or by hand)."""
    admin = _admin(bootstrap, timeout_ms)
    try:
        existing = set(admin.list_topics())
        asked = [s for s in specs if s.configs and s.name in existing]
        if not asked:
            return []
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, s.name, configs=dict.fromkeys(s.configs)) for s in asked
        ]
        found = admin.describe_configs(resources, config_filter="all")["topic"]
    finally:
        admin.close()
    drift = []
    for spec in asked:
        for key, wanted in spec.configs.items():
            have = found.get(spec.name, {}).get(key, {}).get("value")
            if have is not None and have != wanted:
                drift.append(SettingDrift(spec.name, key, wanted, str(have)))
    return drift
