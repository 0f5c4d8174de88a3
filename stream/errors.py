"""Errors raised by the stream package (the service, its Kafka plumbing and the command line)."""


class MqcastError(Exception):
    """Base class of the service's own failures."""


class BrokerError(MqcastError):
    """The local Kafka broker could not be provisioned, started or stopped."""


class PublishError(MqcastError):
    """The broker did not acknowledge output; input offsets must not be committed."""


class ModelMismatchError(MqcastError):
    """The model artefact does not fit the service's configuration."""


class OffsetOrderError(MqcastError):
    """An offset commit would move a partition backwards."""
