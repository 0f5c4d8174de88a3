"""Broker settings, without starting Java."""

from __future__ import annotations

import argparse
import socket

import pytest

from stream.broker import add_broker_arguments, free_port, server_properties


def test_server_properties_are_a_loopback_kraft_node(tmp_path):
    text = server_properties(19092, 19093, tmp_path)
    props = dict(line.split("=", 1) for line in text.splitlines() if line)
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["auto.create.topics.enable"] == "false"
    assert props["log.dirs"] == str(tmp_path)


def test_free_port_can_be_bound_on_loopback():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_broker_flags_take_defaults_from_the_environment(monkeypatch):
    monkeypatch.setenv("MQCAST_BROKER_PORT", "19999")
    p = argparse.ArgumentParser()
    add_broker_arguments(p)
    assert p.parse_args([]).port == 19999
    assert p.parse_args(["--port", "2000"]).port == 2000
    assert "MQCAST_BROKER_PORT" in p.format_help()


def test_bad_port_in_the_environment_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("MQCAST_BROKER_PORT", "http")
    p = argparse.ArgumentParser()
    add_broker_arguments(p)
    with pytest.raises(SystemExit):
        p.parse_args([])
