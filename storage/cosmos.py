"""Azure Cosmos DB backend: one container per kind, version-ordered writes guarded by etags."""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import AzureError
from azure.cosmos import ContainerProxy, CosmosClient, PartitionKey, exceptions

from .base import StorageBackend, check_limit
from .config import Settings, load_settings
from .errors import ConfigError, StorageError, TransientStorageError, ValidationError
from .ids import check_id, row_id
from .ops import KINDS, Kind, Op, Record, records

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Layout:
    container: str
    partition_field: str  # what reads filter on, and the partition key of new containers
    sub_id_field: str


_LAYOUTS: dict[Kind, _Layout] = {
    "state": _Layout("agent_states", "agent_id", "state_id"),
    "task": _Layout("agent_tasks", "agent_id", "task_id"),
    "conversation": _Layout("conversations", "conversation_id", "message_id"),
    "transaction": _Layout("transactions", "case_id", "transaction_id"),
}
# Payloads are never queried; indexing them would cost write RUs in proportion to their size.
_INDEXING_POLICY = {
    "indexingMode": "consistent",
    "automatic": True,
    "includedPaths": [{"path": "/*"}],
    "excludedPaths": [{"path": "/data/*"}, {"path": '/"_etag"/?'}],
}
# Worth retrying later. The SDK has already retried 429 (throttling) itself by then.
_TRANSIENT_STATUS = frozenset({408, 410, 429, 449, 502, 503, 504})
# Concurrent writers can make an etag stale again and again; past this we call it transient.
_MAX_WRITE_ATTEMPTS = 10
_LOOPBACK_TLS_WARNING = r"Unverified HTTPS request is being made to host '(127\.0\.0\.1|localhost)'"
_CHUNK = 16  # records per executor task: amortises the hand-off, still spreads the work
_BAD_NAME_CHARS = frozenset("/\\?#\t\r\n")  # in database names: refused by Cosmos DB or its SDK


@dataclass(frozen=True, slots=True)
class _Container:
    proxy: ContainerProxy
    layout: _Layout
    key_field: str  # the item field the container is partitioned on

    @property
    def aligned(self) -> bool:
        """Partitioned on the field reads filter on (not, e.g., the seed's `/id`)."""
        return self.key_field == self.layout.partition_field

    def query(self, sql: str, params: Mapping[str, object], partition: str | None) -> list[Any]:
        parameters: list[dict[str, object]] = [{"name": k, "value": v} for k, v in params.items()]
        if partition is not None and self.aligned:
            return list(self.proxy.query_items(sql, parameters=parameters, partition_key=partition))
        # Partitioned on another field (the seed's `/id`), or a scan: the query spans partitions.
        return list(
            self.proxy.query_items(sql, parameters=parameters, enable_cross_partition_query=True)
        )


class CosmosDBClient(StorageBackend):
    """Stores agentstore records in Azure Cosmos DB (NoSQL API).

    Creates the database and the containers `agent_states`, `agent_tasks`, `conversations`
    and `transactions` if missing, partitioned on `/agent_id`, `/agent_id`, `/conversation_id`
    and `/case_id`. Existing containers are used as they are, whatever their partition key
    path (e.g. `/id`), as long as it names a field this client writes.

    Args:
        settings: the configuration; read from the environment and `.env` when None.
        **overrides: settings to use when `settings` is None, e.g. `cosmos_endpoint=...`.

    Raises:
        ConfigError: endpoint, key, database name or a container's partition key is unusable.
        StorageError: the account refused the key (TransientStorageError: it was unreachable).
    """

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        settings = settings or load_settings(**overrides)
        if not settings.cosmos_endpoint or settings.cosmos_key is None:
            raise ConfigError(
                "COSMOS_ENDPOINT and COSMOS_KEY must both be set to use Cosmos DB "
                "(e.g. COSMOS_ENDPOINT=https://<account>.documents.azure.com:443/)"
            )
        self._endpoint = settings.cosmos_endpoint
        self._database_name = name = settings.cosmos_database_name
        if not 0 < len(name) <= 255 or name[-1] == " " or not _BAD_NAME_CHARS.isdisjoint(name):
            raise ConfigError(
                "COSMOS_DATABASE_NAME must be 1-255 characters, without / \\ ? # tab or newline, "
                f"and not end with a space; got {name[:40]!r}"
            )
        self._key = settings.cosmos_key  # kept as SecretStr: masked in any dump of the object
        self._closed = False
        self._lock = threading.Lock()
        if urlsplit(self._endpoint).hostname in ("127.0.0.1", "localhost"):
            # The SDK skips certificate checks for these two hosts only (its emulator rule) and
            # urllib3 then warns on every request; re-adding the same filter replaces it.
            warnings.filterwarnings("ignore", message=_LOOPBACK_TLS_WARNING)
        self._client = self._call(self._connect)
        try:
            self._containers = self._call(self._open_containers)
        except BaseException:
            self._client.close()
            raise
        self._executor = ThreadPoolExecutor(
            max_workers=settings.cosmos_max_concurrency, thread_name_prefix="agentstore-cosmos"
        )

    def __repr__(self) -> str:
        return f"CosmosDBClient(endpoint={self._endpoint!r}, database={self._database_name!r})"

    def _connect(self) -> CosmosClient:
        # For 127.0.0.1/localhost the SDK itself skips certificate checks (its emulator rule);
        # every other host is verified. The SDK retries throttling (429) up to `retry_total`
        # times within `retry_backoff_max` s; it may also retry a write after a timeout, which
        # is safe here because every write is conditional and idempotent.
        try:
            return CosmosClient(
                self._endpoint,
                credential=self._key.get_secret_value(),
                connection_timeout=10,
                read_timeout=60,
                retry_total=9,
                retry_backoff_max=30,
                retry_write=2,
                enable_compact_utf8_item_writes=True,  # a ~2 MB non-ASCII payload stays ~2 MB
            )
        except (ValueError, TypeError):
            # The SDK base64-decodes the key to sign the first request; its error says little.
            raise ConfigError("COSMOS_KEY is not a valid base64 account key") from None

    def _open_containers(self) -> dict[Kind, _Container]:
        database = _if_exists_race(
            functools.partial(self._client.create_database_if_not_exists, self._database_name)
        )
        opened: dict[Kind, _Container] = {}
        for kind in KINDS:
            layout = _LAYOUTS[kind]
            create = functools.partial(
                database.create_container_if_not_exists,
                layout.container,
                PartitionKey(path=f"/{layout.partition_field}"),
                indexing_policy=_INDEXING_POLICY,
            )
            proxy = _if_exists_race(create)
            paths = proxy.read().get("partitionKey", {}).get("paths", ["/id"])
            opened[kind] = _Container(proxy, layout, _key_field(layout, paths))
        return opened

    # -- writes -----------------------------------------------------------------------------

    def apply(self, ops: Sequence[Op]) -> None:
        """Write `ops` of any kinds; the newest version per record wins, equal versions are no-ops.

        Not atomic on Cosmos DB: records are written concurrently, grouped by container and
        partition, and a failure can leave some written and others not. Each record's write
        is idempotent and version-ordered on its own, so retrying the whole batch converges on
        the state a single successful apply would have reached.

        Raises:
            TransientStorageError: throttling, timeouts or contention outlasted the retries.
            StorageError: Cosmos DB refused a write; the message has its status and reason.
        """
        self.write_records(records(ops))

    def write_records(self, grouped: dict[Kind, list[Record]]) -> None:
        """Write deduped records, each only if newer than what is stored; see `apply`."""
        self._check_open()
        chunks: list[tuple[_Container, list[Record]]] = []
        for kind, recs in grouped.items():
            container = self._containers[kind]
            recs = sorted(recs, key=lambda r: r.partition)
            for _, group in itertools.groupby(recs, key=lambda r: r.partition):
                part = list(group)
                chunks += [(container, part[i : i + _CHUNK]) for i in range(0, len(part), _CHUNK)]
        if len(chunks) <= 1:
            for container, chunk in chunks:  # one partition's worth: no thread hand-off
                self._write_chunk(container, chunk)
            return
        futures = [self._executor.submit(self._write_chunk, c, recs) for c, recs in chunks]
        errors = [exc for f in futures if (exc := f.exception()) is not None]
        if errors:
            log.warning("%d of %d Cosmos DB write chunks failed", len(errors), len(futures))
            # A permanent failure is the more useful report: retrying will not fix it.
            raise next((e for e in errors if not isinstance(e, TransientStorageError)), errors[0])

    def _write_chunk(self, container: _Container, recs: list[Record]) -> None:
        # Records of one partition: one query finds which exist, instead of a read per record.
        layout = container.layout
        if len(recs) > 1 and recs[0].kind != "conversation" and container.aligned:
            where = f"c.{layout.partition_field} = @p AND ARRAY_CONTAINS(@ids, c.id)"
            sql = f"SELECT * FROM c WHERE {where}"
            params = {"@p": recs[0].partition, "@ids": [r.row_id for r in recs]}
            found = {
                i["id"]: i
                for i in self._call(lambda: container.query(sql, params, recs[0].partition))
            }
            for rec in recs:
                current = found.get(rec.row_id)
                self._call(functools.partial(_write, container, rec, current, fresh=True))
        else:
            for rec in recs:
                self._call(functools.partial(_write, container, rec))

    # -- reads ------------------------------------------------------------------------------

    def get_state(self, agent_id: str, state_id: str) -> dict[str, Any] | None:
        """The newest saved state of `agent_id` named `state_id`, or None."""
        return self._point_read("state", agent_id, state_id)

    def get_task(self, agent_id: str, task_id: str) -> dict[str, Any] | None:
        """The newest saved data of task `task_id` of `agent_id`, or None."""
        return self._point_read("task", agent_id, task_id)

    def get_conversation_history(
        self, conversation_id: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Messages of `conversation_id` oldest first; with `limit`, only the newest `limit`."""
        check_id("conversation_id", conversation_id)
        return self._in_order("conversation", conversation_id, check_limit(limit))

    def get_transactions(self, case_id: str) -> list[dict[str, Any]]:
        """Transactions of `case_id` in the order they were first saved, each with its `"id"`."""
        return self._in_order("transaction", check_id("case_id", case_id), None)

    def _in_order(self, kind: Kind, value: str, limit: int | None) -> list[dict[str, Any]]:
        self._check_open()
        if limit == 0:
            return []
        container = self._containers[kind]
        # The field name is ours, never a caller's value; values only travel as parameters.
        where = f"FROM c WHERE c.{container.layout.partition_field} = @v"
        if limit is None:
            sql = f"SELECT VALUE c.data {where} ORDER BY c.position"
            return self._call(lambda: container.query(sql, {"@v": value}, value))
        # Newest `limit` first, then reversed: one ORDER BY field needs no composite index.
        sql = f"SELECT TOP @n VALUE c.data {where} ORDER BY c.position DESC"
        newest = self._call(lambda: container.query(sql, {"@v": value, "@n": limit}, value))
        newest.reverse()
        return newest

    def scan_records(self, kind: Kind, after: str | None = None, limit: int = 500) -> list[Record]:
        """Up to `limit` stored records of `kind` with row id > `after`, in item id order.

        Items without our fields (e.g. written by the seed) are skipped.
        """
        if check_limit(limit) == 0:
            return []
        self._check_open()
        container = self._containers[kind]
        sql = (
            "SELECT TOP @n * FROM c WHERE c.id > @after AND IS_DEFINED(c.version) "
            "AND IS_DEFINED(c.data) ORDER BY c.id"
        )
        params: dict[str, object] = {"@n": limit, "@after": after or ""}
        items = self._call(lambda: container.query(sql, params, None))
        pf, sf = container.layout.partition_field, container.layout.sub_id_field
        return [
            Record(kind, i["id"], i[pf], i["data"], i["version"], i["position"], i[sf])
            for i in items
        ]

    def _point_read(self, kind: Kind, owner: str, sub: str) -> dict[str, Any] | None:
        layout = self._containers[kind].layout
        check_id(layout.partition_field, owner)
        check_id(layout.sub_id_field, sub)
        self._check_open()
        try:
            rid = row_id((layout.partition_field, owner), (layout.sub_id_field, sub))
        except ValidationError:
            return None  # too long together to have been saved
        container = self._containers[kind]
        fields = {"id": rid, layout.partition_field: owner, layout.sub_id_field: sub}
        item = self._call(lambda: _read(container.proxy, rid, fields[container.key_field]))
        return None if item is None else dict(item["data"])

    # -- lifecycle and errors ---------------------------------------------------------------

    def close(self) -> None:
        """Close the connections and the write threads; the client is unusable afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True)
        self._client.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("this CosmosDBClient is closed; create a new one")

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except exceptions.CosmosHttpResponseError as exc:
            self._raise(exc, exc.status_code)
        except AzureError as exc:  # no answer: connection refused, reset, timed out
            self._raise(exc, getattr(exc, "status_code", None))

    def _raise(self, exc: AzureError, status: int | None) -> NoReturn:
        reason = _short_reason(exc).replace(self._key.get_secret_value(), "***")
        where = f"Cosmos DB at {self._endpoint}"
        if status is None:
            raise TransientStorageError(f"{where} could not be reached: {reason}") from exc
        if status in _TRANSIENT_STATUS:
            raise TransientStorageError(
                f"{where} answered {status} (retry later): {reason}"
            ) from exc
        hint = ": check COSMOS_KEY" if status in (401, 403) else ""
        raise StorageError(f"{where} answered {status}{hint}: {reason}") from exc


def _write(
    container: _Container, rec: Record, current: dict[str, Any] | None = None, fresh: bool = False
) -> None:
    """Store `rec` unless a newer version is stored; `fresh`: `current` is what is stored."""
    layout = container.layout
    item: dict[str, Any] = {
        "id": rec.row_id,
        layout.partition_field: rec.partition,
        layout.sub_id_field: rec.sub_id,
        "version": rec.version,
        "position": rec.position,
        "data": rec.data,
    }
    proxy, key = container.proxy, item[container.key_field]
    # Messages and transactions are usually new: create first and read only on conflict.
    fresh = fresh or rec.kind in ("conversation", "transaction")
    for _ in range(_MAX_WRITE_ATTEMPTS):
        if not fresh:
            current = _read(proxy, item["id"], key)
        fresh = False
        if current is None:
            try:
                proxy.create_item(item)
                return
            except exceptions.CosmosResourceExistsError:
                if rec.kind == "conversation":
                    return  # messages are immutable: the stored copy is this one
                continue
        wanted = _merge(rec.kind, current, item)
        if wanted is None:
            return
        try:
            proxy.replace_item(
                item["id"],
                wanted,
                etag=current["_etag"],
                match_condition=MatchConditions.IfNotModified,
            )
            return
        except exceptions.CosmosAccessConditionFailedError:
            continue  # written by someone else meanwhile: read it again
        except exceptions.CosmosResourceNotFoundError:
            current, fresh = None, True
    raise TransientStorageError(
        f"Cosmos DB: gave up writing {rec.kind} {rec.row_id!r} after {_MAX_WRITE_ATTEMPTS} "
        "attempts; concurrent writers kept changing it. Retry the save."
    )


def _read(proxy: ContainerProxy, item_id: str, key: str) -> dict[str, Any] | None:
    try:
        item: dict[str, Any] = proxy.read_item(item_id, partition_key=key)
    except exceptions.CosmosResourceNotFoundError:
        return None
    return item


def _merge(kind: Kind, current: dict[str, Any], item: dict[str, Any]) -> dict[str, Any] | None:
    """What to store over `current` (None: keep it), as PostgreSQL's upserts decide."""
    newer = item["version"] > current["version"]
    if kind != "transaction":
        return item if newer else None
    # A transaction keeps the place of its first save, whichever version arrives first.
    position = min(current["position"], item["position"])
    if newer:
        return {**item, "position": position}
    if position == current["position"]:
        return None
    return {**{k: v for k, v in current.items() if not k.startswith("_")}, "position": position}


def _key_field(layout: _Layout, paths: list[str]) -> str:
    usable = ("id", layout.partition_field, layout.sub_id_field)
    field = paths[0].lstrip("/") if len(paths) == 1 else ""
    if field not in usable:
        raise ConfigError(
            f"Cosmos DB container {layout.container!r} is partitioned on {paths}; agentstore "
            f"needs one path among {['/' + f for f in usable]}. Use another "
            "COSMOS_DATABASE_NAME or recreate the container."
        )
    return field


def _if_exists_race(create: Callable[[], T]) -> T:
    # Processes starting together can both miss the resource, then race to create it.
    for _ in range(2):
        try:
            return create()
        except exceptions.CosmosResourceExistsError:
            continue
    return create()


def _short_reason(exc: AzureError) -> str:
    text = (exc.message if isinstance(exc, exceptions.CosmosHttpResponseError) else str(exc)) or ""
    # The SDK's message is "(Code) Message\nCode: ...\nMessage: ..."; the first line suffices.
    lines = text.strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]
