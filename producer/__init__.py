"""The producer side of agentstore: `Producer` publishes saves to the worker queue."""

from .client import Producer
from .errors import DeadLetteredError, PublishError

__all__ = ["DeadLetteredError", "Producer", "PublishError"]
