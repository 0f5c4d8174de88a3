"""`mqcast topics` against a real broker: what it creates, and with which settings."""

from __future__ import annotations

import uuid

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from stream.cli import main


def _modified_configs(admin: KafkaAdminClient, topic: str) -> dict[str, str]:
    """The topic's settings that differ from the broker's defaults."""
    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    return {key: entry["value"] for key, entry in described["topic"][topic].items()}


def test_topics_command_creates_each_topic_once_with_its_settings(
    bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    suffix = uuid.uuid4().hex[:10]
    names = {role: f"{role}-{suffix}" for role in ("sales", "forecasts", "dlq", "items")}
    argv = [
        "topics",
        "--bootstrap",
        bootstrap,
        "--sales-topic",
        names["sales"],
        "--forecast-topic",
        names["forecasts"],
        "--dead-letter-topic",
        names["dlq"],
        "--items-topic",
        names["items"],
        "--partitions",
        "3",
    ]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="mqcast-tests")
    try:
        assert main(argv) == 0
        created = capsys.readouterr().out
        assert all(name in created for name in names.values())
        assert "note:" not in created  # every topic as mqcast makes it

        partitions = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(names.values()))}
        assert partitions == {names["sales"]: 3, names["forecasts"]: 3, names["dlq"]: 1, names["items"]: 3}
        # The forecast topic's small index keeps a fresh segment's first index entry cheap
        # (stream/topics.py says why); the other topics keep the broker's defaults.
        assert _modified_configs(admin, names["forecasts"]) == {"segment.index.bytes": "1048576"}
        assert _modified_configs(admin, names["sales"]) == {}
        assert _modified_configs(admin, names["items"]) == {"cleanup.policy": "compact"}

        assert main(argv) == 0
        again = capsys.readouterr().out
        assert "nothing (all topics exist)" in again and "note:" not in again
    finally:
        admin.delete_topics([n for n in names.values() if n in set(admin.list_topics())])
        admin.close()


def test_topics_command_names_a_setting_an_existing_topic_lacks_and_the_command_to_change_it(
    bootstrap: str, topic_factory, capsys: pytest.CaptureFixture[str]
) -> None:
    # A forecast topic made before the small index (or by hand), and a compacted items topic.
    forecasts = topic_factory(partitions=2, prefix="fc")
    items = topic_factory(partitions=2, prefix="items", configs={"cleanup.policy": "compact"})
    sales, dlq = topic_factory(partitions=2, prefix="sales"), topic_factory(prefix="dlq")
    argv = ["topics", "--bootstrap", bootstrap, "--sales-topic", sales, "--forecast-topic", forecasts]
    argv += ["--dead-letter-topic", dlq, "--items-topic", items, "--partitions", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "nothing (all topics exist)" in out
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1, out  # the items topic is compacted as asked: no note for it
    # The broker's default (10 MiB unless a broker says otherwise), not the 1 MiB asked for.
    assert f"topic {forecasts!r} exists with segment.index.bytes=" in notes[0]
    assert "exists with segment.index.bytes=1048576;" not in notes[0]
    assert f"--entity-name {forecasts} --add-config segment.index.bytes=1048576" in notes[0]
