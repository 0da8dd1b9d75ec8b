"""The producer side of agentstore: `Producer` (and `AsyncProducer`, for asyncio) publishes
saves to the worker queue."""

from broker.errors import PublishError

from .aio import AsyncProducer
from .client import Producer
from .errors import BrokerUnavailableError, BufferFullError, DeadLetteredError, LostOpsError

__all__ = [
    "AsyncProducer",
    "BrokerUnavailableError",
    "BufferFullError",
    "DeadLetteredError",
    "LostOpsError",
    "Producer",
    "PublishError",
]
