"""Redis Sentinel broker URLs: one parser for the producer, the asyncio producer, the worker
and the CLI.

A Sentinel URL is kombu's: `sentinel://[user:password@]host:port[/db];sentinel://host:port;...`,
one part per Sentinel. The URL's credentials and database are the Redis servers' (kombu takes
them from its first part); the primary's name, the Sentinels' own password and TLS come from
settings (`AGENTSTORE_SENTINEL_MASTER`, `AGENTSTORE_SENTINEL_PASSWORD`,
`AGENTSTORE_SENTINEL_TLS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from storage.config import SENTINEL_SCHEME, Settings, check_broker_url

DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelOptions:
    """What a Sentinel URL does not say: the primary's name, the Sentinels' password, TLS."""

    master: str = "mymaster"
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> SentinelOptions:
        secret = settings.agentstore_sentinel_password
        return cls(
            master=settings.agentstore_sentinel_master,
            password=None if secret is None else secret.get_secret_value(),
            tls=settings.agentstore_sentinel_tls,
        )


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed Sentinel URL plus its options."""

    sentinels: list[tuple[str, int]]
    db: int
    username: str | None
    password: str | None = field(repr=False)
    options: SentinelOptions
    # The URL's `ssl_*` query parameters (as in a `rediss://` URL: `ssl_ca_certs=...`).
    ssl: dict[str, str] = field(default_factory=dict)

    def tls_kwargs(self) -> dict[str, Any]:
        """redis-py's TLS settings for Sentinels and servers alike; none without TLS."""
        if not self.options.tls:
            return {}
        kwargs: dict[str, Any] = {"ssl": True, **self.ssl}
        if "ssl_check_hostname" in kwargs:
            kwargs["ssl_check_hostname"] = kwargs["ssl_check_hostname"].lower() != "false"
        return kwargs

    def sentinel_kwargs(self, socket_options: dict[str, Any]) -> dict[str, Any]:
        """Connection settings for the Sentinels themselves."""
        kwargs = {k: v for k, v in socket_options.items() if k.startswith("socket_")}
        if self.options.password is not None:
            kwargs["password"] = self.options.password
        return {**kwargs, **self.tls_kwargs()}

    def server_kwargs(self) -> dict[str, Any]:
        """Connection settings for the primary (besides socket options)."""
        kwargs: dict[str, Any] = {"db": self.db, "ssl": False, **self.tls_kwargs()}
        if self.username:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def parse(url: str, options: SentinelOptions | None = None) -> SentinelTarget:
    """The Sentinels, database and credentials of a `sentinel://` URL; `ConfigError` (never
    showing a password) if it is malformed."""
    check_broker_url("broker URL", url)
    sentinels: list[tuple[str, int]] = []
    for part in url.split(";"):
        parts = urlsplit(part)
        sentinels.append((parts.hostname or "127.0.0.1", parts.port or DEFAULT_SENTINEL_PORT))
    first = urlsplit(url.split(";")[0])
    path = first.path.strip("/")
    return SentinelTarget(
        sentinels=sentinels,
        db=int(path) if path else 0,
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password is not None else None,
        options=options or SentinelOptions(),
        ssl={k: v[-1] for k, v in parse_qs(first.query).items() if k.startswith("ssl_")},
    )


def options_from_environment() -> SentinelOptions:
    """Sentinel options from the environment and `.env` (for callers given only a URL)."""
    from storage.config import load_settings

    return SentinelOptions.from_settings(load_settings())


def sentinel_transport_options(target: SentinelTarget) -> dict[str, Any]:
    """kombu's Sentinel transport options for a parsed URL (Celery apps: the worker's, the
    CLI's ping). kombu takes TLS to the servers from the URL's `ssl_*` parameters or
    Celery's `broker_use_ssl` (`celery_ssl_options`)."""
    # Bounded: kombu gives the Sentinels' connections no timeout of their own.
    timeouts = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
    return {
        "master_name": target.options.master,
        "sentinel_kwargs": target.sentinel_kwargs(timeouts),
    }


def celery_ssl_options(target: SentinelTarget) -> dict[str, Any] | None:
    """Celery's `broker_use_ssl` for a parsed URL: None without TLS."""
    if not target.options.tls:
        return None
    kwargs = target.tls_kwargs()
    kwargs.pop("ssl")
    return {"ssl_cert_reqs": "required", **kwargs}
