"""What the Sentinels say about the broker: the primary, its replicas and how far behind
each one is, for `agentstore health` and `agentstore stats`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from . import sentinel as sentinel_urls
from .connection import pool_options
from .sentinel import SentinelOptions


@dataclass(frozen=True)
class Replica:
    address: str
    online: bool  # the Sentinels see it up, and the primary sees it connected and in sync
    lag_bytes: int | None  # replication offset behind the primary's
    lag_s: int | None  # seconds since its last acknowledgement, from the primary


@dataclass(frozen=True)
class SentinelView:
    master: str
    primary: str | None  # host:port; None while no primary is known
    sentinels: int  # Sentinels that answered
    replicas: list[Replica] = field(default_factory=list)
    error: str | None = None

    @property
    def online(self) -> int:
        return sum(r.online for r in self.replicas)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "replicas_online": self.online}


def sentinel_view(url: str, options: SentinelOptions, timeout: float) -> SentinelView:
    """Ask the Sentinels of a `sentinel://` URL for the primary and its replicas, and the
    primary for their replication lag. Never raises for an unreachable service: the view
    says what is missing in `error`."""
    target = sentinel_urls.parse(url, options)
    kwargs = {**target.sentinel_kwargs(pool_options(timeout)), "retry": Retry(NoBackoff(), 0)}
    manager = Sentinel(target.sentinels, sentinel_kwargs=kwargs)  # type: ignore[no-untyped-call]
    answered, replicas_state = 0, None
    for client in manager.sentinels:
        try:
            replicas_state = client.sentinel_slaves(options.master)
            answered += 1
        except redis.RedisError:
            continue
    try:
        host, port = manager.discover_master(options.master)  # type: ignore[no-untyped-call]
    except redis.RedisError as exc:
        manager.close()
        return SentinelView(options.master, None, answered, error=_first_line(exc))
    primary = f"{host}:{port}"
    offsets, lags, error = _primary_replication(host, int(port), target.server_kwargs(), timeout)
    replicas = []
    for state in replicas_state or []:
        address = f"{state['ip']}:{state['port']}"
        flags = str(state.get("flags", ""))
        # Online: connected and in sync as the primary sees it now (what WAIT counts; the
        # Sentinels refresh their own view of a replica's link only every few seconds).
        online = "s_down" not in flags and "o_down" not in flags and address in lags
        offset = offsets.get(address)
        replicas.append(
            Replica(
                address,
                online,
                None if offset is None else max(0, offsets.get("primary", 0) - offset),
                lags.get(address),
            )
        )
    manager.close()
    return SentinelView(options.master, primary, answered, replicas, error)


def _primary_replication(
    host: str, port: int, server_kwargs: dict[str, Any], timeout: float
) -> tuple[dict[str, int], dict[str, int], str | None]:
    """Replica offsets (and the primary's, as "primary") and lags, from INFO replication."""
    client = redis.Redis(host, port, **server_kwargs, **pool_options(timeout))
    try:
        info = client.info("replication")
    except redis.RedisError as exc:
        return {}, {}, f"primary {host}:{port}: {_first_line(exc)}"
    finally:
        client.close()
    offsets = {"primary": int(info.get("master_repl_offset", 0))}
    lags: dict[str, int] = {}
    for key, value in info.items():
        if key.startswith("slave") and isinstance(value, dict):
            address = f"{value.get('ip')}:{value.get('port')}"
            offsets[address] = int(value.get("offset", 0))
            if value.get("state") == "online":  # else still syncing: no lag to speak of
                lags[address] = int(value.get("lag", 0))
    return offsets, lags, None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
