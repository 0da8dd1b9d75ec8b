"""The agentstore worker: `celery -A worker worker` applies queued saves to the store.

The Celery `app` is imported on first access, so the other modules can be used without
configuring (or starting) a worker.
"""

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from .multiproc import prepare

        # Before `.app` imports prometheus-client (see worker.multiproc).
        prepare()
        from .app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
