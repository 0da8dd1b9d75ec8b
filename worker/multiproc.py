"""Prepares prometheus-client's multiprocess mode before anything imports it.

prometheus-client picks where a metric keeps its values when it is first imported: in
memory, or (with PROMETHEUS_MULTIPROC_DIR set) in one file per process, which the main
process sums for /metrics. Pool children are forked from the main process, so the choice
must be made there, before `storage`, `broker` or `worker.app` import prometheus-client.
Only the standard library and python-dotenv are imported here for that reason.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from dotenv import dotenv_values

PORT_VARIABLE = "AGENTSTORE_METRICS_PORT"
DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def metrics_port() -> str | None:
    """AGENTSTORE_METRICS_PORT from the environment or `.env` (unchecked: the worker's
    settings validate it), or None when metrics are off."""
    value = os.environ.get(PORT_VARIABLE) or dotenv_values(".env").get(PORT_VARIABLE)
    return value or None


def prepare() -> None:
    """With metrics on, point prometheus-client at an empty directory of this worker's own.

    PROMETHEUS_MULTIPROC_DIR, if set, is used and emptied of metric files (give each worker
    its own); otherwise a temporary directory is made and removed when the worker exits.
    """
    if metrics_port() is None:
        return
    if "prometheus_client" in sys.modules:
        raise RuntimeError(
            "prometheus_client was imported before the worker set up its metrics directory; "
            "the worker's /metrics would show one process only"
        )
    given = os.environ.get(DIR_VARIABLE)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        return
    made = tempfile.mkdtemp(prefix="agentstore-metrics-")
    os.environ[DIR_VARIABLE] = made
    atexit.register(_remove_if_owner, made, os.getpid())


def _remove_if_owner(directory: str, owner: int) -> None:
    # Forked children run atexit handlers too (on a clean exit); the main process owns it.
    if os.getpid() == owner:
        shutil.rmtree(directory, ignore_errors=True)
