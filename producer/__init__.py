"""The producer side of agentstore: `Producer` publishes saves to the worker queue."""

from broker.errors import PublishError

from .client import Producer
from .errors import BrokerUnavailableError, BufferFullError, DeadLetteredError, LostOpsError

__all__ = [
    "BrokerUnavailableError",
    "BufferFullError",
    "DeadLetteredError",
    "LostOpsError",
    "Producer",
    "PublishError",
]
