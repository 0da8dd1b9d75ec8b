"""Azure Cosmos DB backend: one container per kind, version-ordered writes guarded by etags."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, NoReturn, Self, TypeVar
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError
from azure.cosmos import CosmosClient, PartitionKey, exceptions

from . import cosmos_batch
from .base import StorageBackend, check_limit, prefix_bounds
from .config import Settings, load_settings, mask_url
from .cosmos_items import (
    INDEXING_POLICY,
    LAYOUTS,
    LIVE,
    Container,
    Layout,
    decode,
    from_item,
    key_field,
    read,
    stored_version,
    write,
)
from .cosmos_retention import TOMBSTONES, Remover
from .cosmos_sdk import account, connect, host_and_port
from .errors import (
    ConfigError,
    StorageError,
    StoreUnavailableError,
    TransientStorageError,
    ValidationError,
)
from .forks import PerProcess
from .ids import check_id, row_id
from .records import (
    KINDS,
    SCOPE_KINDS,
    SCOPE_OF,
    Kind,
    Record,
    Scope,
    StreamKind,
    Tombstone,
    Written,
    key_of,
    tombstone_cursor,
)
from .retention import RetentionPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")

# Worth retrying later. The SDK has already retried 429 (throttling) itself by then.
_TRANSIENT_STATUS = frozenset({408, 410, 429, 449, 502, 503, 504})
LOOPBACK_TLS_WARNING = r"Unverified HTTPS request is being made to host '(127\.0\.0\.1|localhost)'"
_CHUNK = 16  # records per executor task: amortises the hand-off, still spreads the work
_BAD_NAME_CHARS = frozenset("/\\?#\t\r\n")  # in database names: refused by Cosmos DB or its SDK


class CosmosDBClient(StorageBackend):
    """Stores agentstore records in Azure Cosmos DB (NoSQL API).

    Creates the database and the containers `agent_states`, `agent_tasks`, `conversations`
    and `transactions` if missing, partitioned on `/agent_id`, `/agent_id`, `/conversation_id`
    and `/case_id`. Existing containers are used as they are, whatever their partition key
    path (e.g. `/id`), as long as it names a field this client writes. Partition tombstones
    (erase, whole-history deletes) live in a fifth container, `agentstore_tombstones`,
    partitioned on `/key` (see `storage.cosmos_retention`).

    Writes are not atomic on Cosmos DB: records are written concurrently, grouped by
    container and partition, and a failure can leave some written and others not. Each
    record's write is idempotent and version-ordered on its own, so retrying the whole batch
    converges on the state a single successful apply would have reached.

    Args:
        settings: the configuration; read from the environment and `.env` when None.
        **overrides: settings to use when `settings` is None, e.g. `cosmos_endpoint=...`.

    Raises:
        ConfigError: endpoint, key, database name or a container's partition key is unusable.
        StorageError: the account refused the key (TransientStorageError: it was unreachable).
    """

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        settings = settings or load_settings(**overrides)
        # The key is kept as SecretStr: masked in any dump of the object.
        self._endpoint, self._key = account(settings)
        self._database_name = name = settings.cosmos_database_name
        if not 0 < len(name) <= 255 or name[-1] == " " or not _BAD_NAME_CHARS.isdisjoint(name):
            raise ConfigError(
                "COSMOS_DATABASE_NAME must be 1-255 characters, without / \\ ? # tab or newline, "
                f"and not end with a space; got {name[:40]!r}"
            )
        self._closed = False
        self._lock = threading.Lock()
        if urlsplit(self._endpoint).hostname in ("127.0.0.1", "localhost"):
            # The SDK skips certificate checks for these two hosts only (its emulator rule) and
            # urllib3 then warns on every request; re-adding the same filter replaces it.
            warnings.filterwarnings("ignore", message=LOOPBACK_TLS_WARNING)
        self._threads = settings.cosmos_max_concurrency
        self._http_log = settings.agentstore_cosmos_http_log
        client = self._call(self._connect)
        try:
            opened = self._call(functools.partial(self._open_containers, client))
        except BaseException:
            client.close()
            raise
        # A forked child makes its own client and threads on first use; the containers
        # exist by then, so it needs only new proxies for them, which cost no request.
        self._io = PerProcess(
            functools.partial(self._reconnect, *opened), self._handles(client, *opened)
        )

    def __repr__(self) -> str:
        return f"CosmosDBClient(endpoint={self._endpoint!r}, database={self._database_name!r})"

    def _connect(self) -> CosmosClient:
        return connect(self._endpoint, self._key.get_secret_value(), self._http_log)

    def _handles(
        self, client: CosmosClient, containers: dict[Kind, Container], tombstones: Container
    ) -> _Handles:
        executor = ThreadPoolExecutor(
            max_workers=self._threads, thread_name_prefix="agentstore-cosmos"
        )
        remover = Remover(containers, tombstones, self._run_all)
        return _Handles(client, containers, tombstones, executor, remover)

    def _reconnect(self, containers: dict[Kind, Container], tombstones: Container) -> _Handles:
        client = self._call(self._connect)
        database = client.get_database_client(self._database_name)

        def reopen(c: Container) -> Container:
            return dataclasses.replace(c, proxy=database.get_container_client(c.layout.container))

        mine = {kind: reopen(c) for kind, c in containers.items()}
        return self._handles(client, mine, reopen(tombstones))

    @property
    def _containers(self) -> dict[Kind, Container]:
        return self._io.get().containers

    @property
    def _remover(self) -> Remover:
        return self._io.get().remover

    @classmethod
    def from_settings(cls, settings: Settings, *, create_schema: bool = True) -> Self:
        return cls(settings)  # the containers are created whatever `create_schema` says

    @classmethod
    def describe(cls, settings: Settings) -> str:
        endpoint = mask_url(account(settings)[0])
        return f"Cosmos DB {endpoint} database {settings.cosmos_database_name}"

    @classmethod
    def identity(cls, settings: Settings) -> tuple[str, ...]:
        host_port = host_and_port(account(settings)[0])
        return ("cosmos", *host_port, settings.cosmos_database_name)

    @classmethod
    def secrets(cls, settings: Settings) -> list[str]:
        return [settings.cosmos_key.get_secret_value()] if settings.cosmos_key else []

    def count(self, kind: StreamKind) -> int:
        """Items of `kind` (deleted ones included) or tombstones: one aggregate query."""
        self._check_open()
        io = self._io.get()
        container = io.tombstones if kind == "tombstone" else io.containers[kind]
        # Over the index only: `c.data` is not indexed, so unlike a scan this skips no item
        # that has a version but no payload (none of ours).
        sql = "SELECT VALUE COUNT(1) FROM c WHERE IS_DEFINED(c.version)"
        return sum(self._call(lambda: container.query(sql, {}, None)))

    def _open_containers(self, client: CosmosClient) -> tuple[dict[Kind, Container], Container]:
        database = _if_exists_race(
            functools.partial(client.create_database_if_not_exists, self._database_name)
        )

        def open_container(layout: Layout, usable: tuple[str, ...] | None = None) -> Container:
            create = functools.partial(
                database.create_container_if_not_exists,
                layout.container,
                PartitionKey(path=f"/{layout.partition_field}"),
                indexing_policy=INDEXING_POLICY,
            )
            proxy = _if_exists_race(create)
            paths = proxy.read().get("partitionKey", {}).get("paths", ["/id"])
            return Container(proxy, layout, key_field(layout, paths, usable))

        opened = {kind: open_container(LAYOUTS[kind]) for kind in KINDS}
        # Tombstone ids are their scope, unique only per key: no other partition key will do.
        return opened, open_container(TOMBSTONES, ("key",))

    # -- writes -----------------------------------------------------------------------------

    def write_records(
        self, grouped: dict[Kind, list[Record]], tombstones: Sequence[Tombstone] = ()
    ) -> Written:
        """Write `tombstones`, then the records they do not cover; not atomic (see the class).

        A record is written only if newer than the stored one and than its partition's
        tombstone; a tombstone deletes its partition's older items.

        Raises:
            TransientStorageError: throttling, timeouts or contention outlasted the retries.
            StorageError: Cosmos DB refused a write; the message has its status and reason.
        """
        self._check_open()
        # Tombstones first, each deleting its partition's older items (bounded concurrency).
        buried: dict[tuple[Scope, str], str | None] = {}
        stored: Written = {}
        for tombstone in tombstones:
            erase = functools.partial(self._remover.erase, tombstone)
            version, wrote = self._call(erase)
            buried[(tombstone.scope, tombstone.key)] = version
            if wrote:
                stored[key_of(tombstone)] = version
        recs = [rec for kind in KINDS for rec in grouped.get(kind, ())]
        if not recs:
            return stored
        # One tombstone read per partition, not per record; an older record is skipped.
        buried.update(self._tombstones_of({_partition(rec) for rec in recs} - buried.keys()))
        recs = [rec for rec in recs if not _covered(rec.version, buried[_partition(rec)])]
        written = self._write_all(recs)
        if written:
            self._take_back(written)
        stored.update((key_of(rec), item["version"]) for _, rec, item in written)
        return stored

    def stored_versions(self, items: Sequence[Record | Tombstone]) -> Written:
        self._check_open()
        tasks: list[Callable[[], str | None]] = [
            functools.partial(self._remover.tombstone, item.scope, item.key)
            if isinstance(item, Tombstone)
            else functools.partial(stored_version, self._containers[item.kind], item)
            for item in items
        ]
        found = self._run_all(tasks)
        return {key_of(i): v for i, v in zip(items, found, strict=True) if v is not None}

    def _tombstones_of(
        self, partitions: set[tuple[Scope, str]]
    ) -> dict[tuple[Scope, str], str | None]:
        keys = sorted(partitions)
        tasks = [functools.partial(self._remover.tombstone, *key) for key in keys]
        return dict(zip(keys, self._run_all(tasks), strict=True))

    def _write_all(self, recs: list[Record]) -> list[tuple[Container, Record, dict[str, Any]]]:
        chunks: list[tuple[Container, list[Record]]] = []
        for kind in KINDS:
            container = self._containers[kind]
            mine = sorted((r for r in recs if r.kind == kind), key=lambda r: r.partition)
            for _, group in itertools.groupby(mine, key=lambda r: r.partition):
                part = list(group)
                size = cosmos_batch.BATCH if container.aligned else _CHUNK
                chunks += [(container, part[i : i + size]) for i in range(0, len(part), size)]
        done = self._run_all([functools.partial(self._write_chunk, c, rs) for c, rs in chunks])
        return [
            (container, rec, item)
            for (container, _), results in zip(chunks, done, strict=True)
            for rec, item in results
        ]

    def _take_back(self, written: list[tuple[Container, Record, dict[str, Any]]]) -> None:
        # A tombstone stored after our check but before its erase's query saw our items is
        # missed by both sides: read the tombstones again and delete what they now cover.
        # Deleting only the items exactly as we wrote them (etag) spares any newer save.
        now = self._tombstones_of({_partition(rec) for _, rec, _ in written})
        doomed: dict[str, tuple[Container, list[dict[str, Any]]]] = {}
        for container, rec, item in written:
            if _covered(item["version"], now[_partition(rec)]):
                doomed.setdefault(container.layout.container, (container, []))[1].append(item)
        for container, items in doomed.values():
            self._call(functools.partial(self._remover.delete_items, container, items))

    def _write_chunk(
        self, container: Container, recs: list[Record]
    ) -> list[tuple[Record, dict[str, Any]]]:
        # Records of one partition: one query finds which exist, instead of a read per record.
        layout = container.layout
        found: dict[str, dict[str, Any]] | None = None
        if len(recs) > 1 and recs[0].kind != "conversation" and container.aligned:
            where = f"c.{layout.partition_field} = @p AND ARRAY_CONTAINS(@ids, c.id)"
            sql = f"SELECT * FROM c WHERE {where}"
            params = {"@p": recs[0].partition, "@ids": [r.row_id for r in recs]}
            items = self._call(lambda: container.query(sql, params, recs[0].partition))
            found = {i["id"]: i for i in items}
        written = []
        if container.aligned and (found is not None or recs[0].kind == "conversation"):
            new = [rec for rec in recs if found is None or rec.row_id not in found]
            if len(new) > 1:
                created = self._call(functools.partial(cosmos_batch.create_records, container, new))
                if created is not None:
                    written += created
                    recs = [rec for rec in recs if found is not None and rec.row_id in found]
        for rec in recs:
            if found is None:
                item = self._call(functools.partial(write, container, rec))
            else:
                current = found.get(rec.row_id)
                item = self._call(functools.partial(write, container, rec, current, fresh=True))
            if item is not None:
                written.append((rec, item))
        return written

    def _run_all(self, tasks: Sequence[Callable[[], T]]) -> list[T]:
        """Results of `tasks`, run on the write threads (inline when there is only one)."""
        if len(tasks) <= 1:
            return [self._call(task) for task in tasks]
        executor = self._io.get().executor
        futures = [executor.submit(self._call, task) for task in tasks]
        wait(futures, return_when=FIRST_EXCEPTION)
        # One failure fails the apply, which is retried whole: tasks not started yet would
        # only spend the retry budget (each waiting on the same unreachable store).
        for future in futures:
            future.cancel()
        wait(futures)
        errors = [exc for f in futures if not f.cancelled() and (exc := f.exception())]
        if errors:
            log.warning("%d of %d Cosmos DB tasks failed", len(errors), len(futures))
            # A permanent failure is the more useful report: retrying will not fix it.
            raise next((e for e in errors if not isinstance(e, TransientStorageError)), errors[0])
        return [f.result() for f in futures]

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
        where = f"FROM c WHERE c.{container.layout.partition_field} = @v AND {LIVE}"
        if limit is None:
            sql = f"SELECT VALUE c.data {where} ORDER BY c.position"
            texts = self._call(lambda: container.query(sql, {"@v": value}, value))
            return [decode(text) for text in texts]
        # Newest `limit` first, then reversed: one ORDER BY field needs no composite index.
        sql = f"SELECT TOP @n VALUE c.data {where} ORDER BY c.position DESC"
        newest = self._call(lambda: container.query(sql, {"@v": value, "@n": limit}, value))
        return [decode(text) for text in reversed(newest)]

    def list_states(self, agent_id: str) -> list[str]:
        """The ids of the states of `agent_id` that exist (not deleted), sorted."""
        return self._list("state", agent_id)

    def list_tasks(self, agent_id: str) -> list[str]:
        """The ids of the tasks of `agent_id` that exist (not deleted), sorted."""
        return self._list("task", agent_id)

    def _list(self, kind: Kind, owner: str) -> list[str]:
        container = self._containers[kind]
        pf, sf = container.layout.partition_field, container.layout.sub_id_field
        check_id(pf, owner)
        self._check_open()
        sql = f"SELECT VALUE c.{sf} FROM c WHERE c.{pf} = @p AND IS_DEFINED(c.version) AND {LIVE}"
        return sorted(self._call(lambda: container.query(sql, {"@p": owner}, owner)))

    def scan_records(self, kind: Kind, after: str | None = None, limit: int = 500) -> list[Record]:
        """Up to `limit` stored records of `kind` with row id > `after`, in item id order.

        Deleted records (tombstone items) are included. Items without our fields (e.g.
        written by the seed) are skipped.
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
        return [from_item(kind, container.layout, item) for item in items]

    def read_rows(
        self,
        kind: Kind,
        partition: str,
        prefix: str,
        *,
        below: str | None = None,
        descending: bool = False,
        limit: int | None = None,
    ) -> list[Record]:
        low, high = prefix_bounds(prefix, below)
        limit = check_limit(limit)
        if limit == 0:
            return []
        self._check_open()
        container = self._containers[kind]
        top = "" if limit is None else "TOP @n "
        sql = (
            f"SELECT {top}* FROM c WHERE c.{container.layout.partition_field} = @p "
            f"AND c.id >= @low AND c.id < @high AND {LIVE} "
            f"ORDER BY c.id {'DESC' if descending else 'ASC'}"
        )
        params: dict[str, object] = {"@p": partition, "@low": low, "@high": high}
        if limit is not None:
            params["@n"] = limit
        items = self._call(lambda: container.query(sql, params, partition))
        return [from_item(kind, container.layout, item) for item in items]

    def get_rows(self, kind: Kind, partition: str, row_ids: Sequence[str]) -> list[Record]:
        if not row_ids:
            return []
        self._check_open()
        container = self._containers[kind]
        sql = (
            f"SELECT * FROM c WHERE c.{container.layout.partition_field} = @p "
            f"AND ARRAY_CONTAINS(@ids, c.id) AND {LIVE}"
        )
        params = {"@p": partition, "@ids": list(row_ids)}
        items = self._call(lambda: container.query(sql, params, partition))
        return [from_item(kind, container.layout, item) for item in items]

    def scan_tombstones(self, after: str | None = None, limit: int = 500) -> list[Tombstone]:
        """Up to `limit` stored partition tombstones after `after`, in (scope, key) order."""
        self._check_open()
        wanted = check_limit(limit) or 0
        first_scope, first_key = tombstone_cursor(after)
        found: list[Tombstone] = []
        for scope in sorted(SCOPE_KINDS):
            left = wanted - len(found)
            if scope < first_scope or left <= 0:
                continue
            start = first_key if scope == first_scope else ""
            found += self._call(functools.partial(self._remover.tombstones, scope, start, left))
        return found

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
        item = self._call(lambda: read(container.proxy, rid, fields[container.key_field]))
        return None if item is None or item.get("deleted") else decode(item["data"])

    # -- retention --------------------------------------------------------------------------

    def _prune_records(self, policy: RetentionPolicy, dry_run: bool) -> dict[str, int]:
        # `policy.batch_size` items a query; an item's age is its `_ts` (last write). Several
        # processes may prune at once: an item another one deleted first is not counted, and
        # one rewritten since it was read (etag) is looked at again.
        self._check_open()
        return self._call(lambda: self._remover.prune(policy, dry_run))

    # -- lifecycle and errors ---------------------------------------------------------------

    def close(self) -> None:
        """Close the connections and the write threads; the client is unusable afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # Only this process's own: a forked child never made the parent's threads or sockets.
        handles = self._io.made()
        if handles is not None:
            handles.executor.shutdown(wait=True)
            handles.client.close()

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
            raise StoreUnavailableError(f"{where} could not be reached: {reason}") from exc
        if status in _TRANSIENT_STATUS:
            raise TransientStorageError(
                f"{where} answered {status} (retry later): {reason}"
            ) from exc
        hint = ": check COSMOS_KEY" if status in (401, 403) else ""
        raise StorageError(f"{where} answered {status}{hint}: {reason}") from exc


@dataclasses.dataclass(frozen=True, slots=True)
class _Handles:
    """What one process talks to Cosmos DB with: never used by a forked child."""

    client: CosmosClient
    containers: dict[Kind, Container]
    tombstones: Container
    executor: ThreadPoolExecutor
    remover: Remover


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


def _partition(rec: Record) -> tuple[Scope, str]:
    return SCOPE_OF[rec.kind], rec.partition


def _covered(version: str, tombstone: str | None) -> bool:
    """Whether a partition tombstone of version `tombstone` skips a record of `version`."""
    return tombstone is not None and version <= tombstone
