"""The azure-cosmos SDK client as agentstore runs it: bounded retries of its own."""

from __future__ import annotations

from azure.cosmos import CosmosClient

from .errors import ConfigError


def connect(endpoint: str, key: str) -> CosmosClient:
    """A client whose own retries leave the retry budget to the worker (`AGENTSTORE_RETRY_*`).

    Throttling (429) is still retried inside the SDK, up to 9 times within 30 s: the answer
    says how long to wait. A refused or reset connection is retried once, at once (a stale
    pooled connection), not 3 times with back-off: that took 14-17 s per apply across its
    requests, so a 30 s outage used up the worker's budget in 2 of its 6 tries.
    Raises `ConfigError` for a key that is not base64.
    """
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
        )
    except (ValueError, TypeError):
        # The SDK base64-decodes the key to sign the first request; its error says little.
        raise ConfigError("COSMOS_KEY is not a valid base64 account key") from None
