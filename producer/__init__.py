"""The producer side of agentstore: `Producer` publishes saves to the worker queue."""

from .client import Producer
from .errors import (
    BrokerUnavailableError,
    BufferFullError,
    DeadLetteredError,
    LostOpsError,
    PublishError,
)

__all__ = [
    "BrokerUnavailableError",
    "BufferFullError",
    "DeadLetteredError",
    "LostOpsError",
    "Producer",
    "PublishError",
]
