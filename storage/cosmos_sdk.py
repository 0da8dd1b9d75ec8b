"""The azure-cosmos SDK client as agentstore runs it: bounded retries, quiet HTTP logging."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from azure.cosmos import CosmosClient
from prometheus_client import Counter
from pydantic import SecretStr

from .config import Settings
from .errors import ConfigError

# The SDK logs every request and response with its headers at INFO (~10 lines a request).
_HTTP_LOGGERS = (
    "azure.core.pipeline.policies.http_logging_policy",
    "azure.cosmos._cosmos_http_logging_policy",
)
# Every HTTP request to Cosmos DB, retries and throttled ones included, and what it cost.
REQUESTS = Counter("agentstore_cosmos_requests", "HTTP requests to Cosmos DB", ["operation"])
REQUEST_CHARGE = Counter(
    "agentstore_cosmos_request_charge", "request units Cosmos DB charged (x-ms-request-charge)"
)


def account(settings: Settings) -> tuple[str, SecretStr]:
    """The endpoint and key `settings` name, or `ConfigError` saying what to set."""
    if not settings.cosmos_endpoint or settings.cosmos_key is None:
        raise ConfigError(
            "COSMOS_ENDPOINT and COSMOS_KEY must both be set to use Cosmos DB "
            "(e.g. COSMOS_ENDPOINT=https://<account>.documents.azure.com:443/)"
        )
    return settings.cosmos_endpoint, settings.cosmos_key


def host_and_port(endpoint: str) -> tuple[str, str]:
    """The account's host (loopback by name or address: `localhost`) and port."""
    parts = urlsplit(endpoint)
    host = (parts.hostname or "").lower()
    return ("localhost" if host in ("127.0.0.1", "::1") else host), str(parts.port or 443)


def connect(endpoint: str, key: str, http_log: bool = False) -> CosmosClient:
    """A client whose own retries leave the retry budget to the worker's tries.

    Throttling (429) is still retried inside the SDK, up to 9 times within 30 s: the answer
    says how long to wait. A refused or reset connection is retried once, at once (a stale
    pooled connection), not 3 times with back-off: that took 14-17 s per apply across its
    requests, so a 30 s outage used up the worker's budget in 2 of its 6 tries.
    Unless `http_log` (`AGENTSTORE_COSMOS_HTTP_LOG`), see `quiet_http_log`.
    Raises `ConfigError` for a key that is not base64.
    """
    if not http_log:
        quiet_http_log()
    # For 127.0.0.1/localhost the SDK itself skips certificate checks (its emulator rule);
    # every other host is verified. It may retry a write after a timeout (`retry_write`),
    # which is safe here because every write is conditional and idempotent.
    try:
        return CosmosClient(
            endpoint,
            credential=key,
            connection_timeout=10,
            read_timeout=60,
            retry_throttle_total=9,
            retry_throttle_backoff_max=30,
            retry_total=1,
            retry_connect=1,
            retry_read=1,
            retry_backoff_max=1,
            retry_write=2,
            enable_compact_utf8_item_writes=True,  # a ~2 MB non-ASCII payload stays ~2 MB
            raw_response_hook=count_request,
        )
    except (ValueError, TypeError):
        # The SDK base64-decodes the key to sign the first request; its error says little.
        raise ConfigError("COSMOS_KEY is not a valid base64 account key") from None


def quiet_http_log() -> None:
    """Set the SDK's HTTP request/response loggers to WARNING, unless the application set a
    level on one of them or on an `azure` logger above them (the root logger's level, as
    `celery worker --loglevel INFO` sets it, does not count)."""
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if not _configured(logger):
            logger.setLevel(logging.WARNING)


def _configured(logger: logging.Logger) -> bool:
    node: logging.Logger | None = logger
    while node is not None and node is not logging.root:
        if node.level != logging.NOTSET:
            return True
        node = node.parent
    return False


def count_request(response: Any) -> None:
    """Count one HTTP response (an azure-core `PipelineResponse`) and its request charge."""
    http = response.http_response
    REQUESTS.labels(_operation(http.request.method, http.request.headers)).inc()
    charge = http.headers.get("x-ms-request-charge")
    if charge:
        REQUEST_CHARGE.inc(float(charge))


def _operation(method: str, headers: Any) -> str:
    if method != "POST":
        return {"GET": "read", "PUT": "replace", "DELETE": "delete"}.get(method, method.lower())
    if headers.get("x-ms-documentdb-isquery"):
        return "query"
    if headers.get("x-ms-cosmos-is-batch-request"):
        return "batch"
    if str(headers.get("x-ms-documentdb-is-upsert", "")).lower() == "true":
        return "upsert"
    return "create"
