"""lampwatch's exception tree. Foreign errors are translated at the boundary (``raise ... from exc``).

    LampwatchError
    ├── ConfigError          configuration is invalid or incomplete (CLI: exit 2, one line)
    ├── BrokerError          the MQTT broker refused or is unreachable
    ├── StoreError           a store is unreachable or failed; transient: retry, then spool
    │   ├── StoreAuthError   the store refused *us* (401/403: auth turned on, a rotated password):
    │   │                    unusable until an operator acts; spool, alarm, never drop
    │   └── StoreRejected    the store refused the data itself (other 4xx); retrying the same data
    │                        won't help: the gateway finds the offending points and dead-letters them
    └── SpoolFull            the gateway's disk spool reached its bound; ingestion must stop acking

Bad input (payloads, topics) is not an exception at the gateway boundary: decoding returns rejects
with a reason (see ``gateway.decode``). ``contract.topics.TopicError`` and pydantic's
``ValidationError`` are both ``ValueError`` subclasses, raised only when *building* invalid values.
"""

from __future__ import annotations


class LampwatchError(Exception):
    """Base of every lampwatch error."""


class ConfigError(LampwatchError):
    pass


class BrokerError(LampwatchError):
    pass


class StoreError(LampwatchError):
    pass


class StoreAuthError(StoreError):
    pass


class StoreRejected(StoreError):
    pass


class SpoolFull(LampwatchError):
    pass
