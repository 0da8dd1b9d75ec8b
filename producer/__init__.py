"""The producer side of agentstore: `Producer` publishes saves to the worker queue."""

from .client import Producer
from .errors import BufferFullError, DeadLetteredError, PublishError

__all__ = ["BufferFullError", "DeadLetteredError", "Producer", "PublishError"]
