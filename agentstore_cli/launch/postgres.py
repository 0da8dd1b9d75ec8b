"""Throwaway PostgreSQL databases on a server that is already running."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2

from storage.config import mask_url
from storage.pg_url import with_database

from .processes import ServiceError


@contextmanager
def fresh_database(admin_url: str, prefix: str = "agentstore") -> Iterator[str]:
    """A new empty database on the server of `admin_url`, dropped (connections and all) after
    the block; yields its URL. Raises `ServiceError` if the server cannot be reached."""
    try:
        admin = psycopg2.connect(admin_url, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        raise ServiceError(f"PostgreSQL at {mask_url(admin_url)}: {exc}".strip()) from exc
    admin.autocommit = True
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield with_database(admin_url, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
