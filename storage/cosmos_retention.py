"""Removing data from Cosmos DB: partition tombstones (erase, whole deletes) and retention."""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from azure.core import MatchConditions
from azure.cosmos import exceptions

from .cosmos_batch import BATCH, delete_unchanged_items
from .cosmos_items import MAX_WRITE_ATTEMPTS, Container, Layout, delete_unchanged, read
from .errors import TransientStorageError
from .records import SCOPE_KINDS, TOMBSTONE_TABLE, Kind, Scope, Tombstone
from .retention import ROW_DELETED_KINDS, RetentionPolicy, category, prune_limits

T = TypeVar("T")

# Partition tombstones live in a fifth container, one item per (scope, key): id = the scope,
# partitioned on `/key` (the agent, conversation or case id), so checking one is a point read
# (~1 RU) and ids need no escaping (an id is unique per partition key value). Not in the data
# containers: an `agent` tombstone covers two of them; under the seed's `/id` layout it could
# not share a logical partition (nor a transactional batch) with the items it covers anyway;
# and the data containers' reads, scans and migration would all have to step around it.
TOMBSTONES = Layout(TOMBSTONE_TABLE, "key", "scope")

_CHUNK = 16  # deletes per executor task
_ERASE_PAGE = 1_000
_MAX_PRUNE_BATCHES = 1_000  # per category per call, as on PostgreSQL
_AGED = "c._ts < @cut"  # `_ts`: seconds since the epoch of the item's last write
_OURS = "IS_DEFINED(c.version)"  # not items someone else (e.g. the seed) wrote
# Per category (see `retention.prune_limits`) but over_count: which items it removes.
_PRUNE_WHERE: dict[str, str] = {
    category("conversation", "expired"): f"{_OURS} AND {_AGED}",
    category("task", "expired"): f"{_OURS} AND ARRAY_CONTAINS(@statuses, c.status) AND {_AGED}",
    category("transaction", "expired"): f"{_OURS} AND {_AGED}",
    **{
        category(kind, "tombstones"): f"{_OURS} AND c.deleted = true AND {_AGED}"
        for kind in ROW_DELETED_KINDS
    },
    category("tombstone", "expired"): _AGED,
}


class RunAll(Protocol):
    def __call__(self, tasks: Sequence[Callable[[], T]]) -> list[T]: ...


class Remover:
    """Partition tombstones and retention over one database's containers.

    Calls raise the SDK's errors; `run_all` runs tasks with bounded concurrency.
    """

    def __init__(
        self, containers: Mapping[Kind, Container], tombstones: Container, run_all: RunAll
    ) -> None:
        self._containers = containers
        self._tombstones = tombstones
        self._run_all = run_all
        self._by_name = {c.layout.container: c for c in (*containers.values(), tombstones)}

    # -- partition tombstones -----------------------------------------------------------------

    def tombstone(self, scope: Scope, key: str) -> str | None:
        """The version of the stored tombstone of `scope` `key`, or None."""
        item = read(self._tombstones.proxy, scope, key)
        return None if item is None else str(item["version"])

    def tombstones(self, scope: Scope, after: str, limit: int) -> list[Tombstone]:
        """Up to `limit` stored tombstones of `scope` with a key above `after`, in key order."""
        # Keys are unique within a scope (its id), so they page without ties.
        sql = (
            "SELECT TOP @n c.key, c.version FROM c WHERE c.id = @s AND c.key > @after "
            "ORDER BY c.key"
        )
        params = {"@n": limit, "@s": scope, "@after": after}
        items = self._tombstones.query(sql, params, None)
        return [Tombstone(scope, str(i["key"]), str(i["version"])) for i in items]

    def erase(self, tombstone: Tombstone) -> tuple[str, bool]:
        """Store `tombstone`, then delete its partition's items up to the stored one's version.

        Returns the stored tombstone's version (the newer of this one and the one before),
        and whether it is this one, newly stored.
        """
        version, wrote = self._put(tombstone)
        for kind in SCOPE_KINDS[tombstone.scope]:
            container = self._containers[kind]
            where = f"c.{container.layout.partition_field} = @k AND c.version <= @v"
            params = {"@k": tombstone.key, "@v": version}
            self._delete_where(container, where, params, tombstone.key, _ERASE_PAGE, None)
        return version, wrote

    def _put(self, t: Tombstone) -> tuple[str, bool]:
        proxy = self._tombstones.proxy
        item = {"id": t.scope, "key": t.key, "version": t.version}
        for _ in range(MAX_WRITE_ATTEMPTS):
            current = read(proxy, t.scope, t.key)
            try:
                if current is None:
                    proxy.create_item(item)
                elif current["version"] >= t.version:
                    return str(current["version"]), False
                else:
                    proxy.replace_item(
                        t.scope,
                        item,
                        etag=current["_etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
                return t.version, True
            except (
                exceptions.CosmosResourceExistsError,
                exceptions.CosmosAccessConditionFailedError,
                exceptions.CosmosResourceNotFoundError,
            ):
                continue  # another writer got there first: look again
        raise TransientStorageError(
            f"Cosmos DB: gave up writing the {t.scope} tombstone of {t.key!r} after "
            f"{MAX_WRITE_ATTEMPTS} attempts; concurrent writers kept changing it. Retry the delete."
        )

    def delete_items(self, container: Container, items: Sequence[Mapping[str, Any]]) -> int:
        """Delete `items` (as read: id, etag, partition key) that did not change since; a count.

        Items of one logical partition go in transactional batches of 100 (one request each);
        items alone in theirs (e.g. under the seed's `/id` layout) in tasks of `_CHUNK`.
        """
        by_key: dict[Any, list[Mapping[str, Any]]] = {}
        for item in items:
            by_key.setdefault(item[container.key_field], []).append(item)
        alone = [group[0] for group in by_key.values() if len(group) == 1]
        tasks = [
            functools.partial(_delete_each, container, alone[i : i + _CHUNK])
            for i in range(0, len(alone), _CHUNK)
        ]
        tasks += [
            functools.partial(delete_unchanged_items, container, group[i : i + BATCH])
            for group in by_key.values()
            if len(group) > 1
            for i in range(0, len(group), BATCH)
        ]
        return sum(self._run_all(tasks))

    def _delete_where(
        self,
        container: Container,
        where: str,
        params: Mapping[str, object],
        partition: str | None,
        batch: int,
        max_batches: int | None,
    ) -> int:
        # Page by page until none is left. An item that changed since it was read (412) is
        # read again by the next page and deleted only if it still matches; one already gone
        # (404: another pruner) is not counted.
        sql = f"SELECT TOP @n {container.handle} FROM c WHERE {where}"
        removed = 0
        batches = itertools.count() if max_batches is None else range(max_batches)
        for _ in batches:
            page = container.query(sql, {**params, "@n": batch}, partition)
            done = self.delete_items(container, page)
            removed += done
            if len(page) < batch and done == len(page):
                break
        return removed

    # -- retention ----------------------------------------------------------------------------

    def prune(self, policy: RetentionPolicy, dry_run: bool) -> dict[str, int]:
        """Counts per category of what `policy` removes; see `StorageBackend.prune`."""
        counts: dict[str, int] = {}
        for name, limit in prune_limits(policy).items():
            if name == category("conversation", "over_count"):
                counts[name] = self._over_count(int(limit), policy.batch_size, dry_run)
                continue
            container = self._by_name[name.split(":")[0]]
            where = _PRUNE_WHERE[name]
            params: dict[str, object] = {"@cut": time.time() - limit}
            if "@statuses" in where:
                params["@statuses"] = list(policy.finished_statuses)
            if dry_run:
                sql = f"SELECT VALUE COUNT(1) FROM c WHERE {where}"
                counts[name] = sum(container.query(sql, params, None))
            else:
                counts[name] = self._delete_where(
                    container, where, params, None, policy.batch_size, _MAX_PRUNE_BATCHES
                )
        return counts

    def _over_count(self, keep: int, batch: int, dry_run: bool) -> int:
        # No window functions, GROUP BY or DISTINCT to lean on: walk conversation ids in order,
        # `batch` items a page. A page holds whole conversations but maybe the last; that one
        # is counted on its own, and the next page starts after it.
        container = self._containers["conversation"]
        conv = container.layout.partition_field
        mine = "IS_DEFINED(c.position)"
        page_sql = (
            f"SELECT TOP @n VALUE c.{conv} FROM c WHERE c.{conv} > @after AND {mine} "
            f"ORDER BY c.{conv}"
        )
        count_sql = f"SELECT VALUE COUNT(1) FROM c WHERE c.{conv} = @c AND {mine}"
        total, after = 0, ""
        while page := container.query(page_sql, {"@n": batch, "@after": after}, None):
            runs = [(key, len(list(group))) for key, group in itertools.groupby(page)]
            if len(page) == batch:
                last = runs[-1][0]
                runs[-1] = (last, sum(container.query(count_sql, {"@c": last}, last)))
            for key, count in runs:
                if count > keep:
                    total += count - keep if dry_run else self._trim(key, keep, batch)
            if len(page) < batch:
                break
            after = page[-1]
        return total

    def _trim(self, conversation_id: str, keep: int, batch: int) -> int:
        # Delete below the position of the `keep`-th newest message, not "the oldest n": two
        # pruners at once then agree on what stays, and neither removes one message too many.
        container = self._containers["conversation"]
        where = f"c.{container.layout.partition_field} = @c AND IS_DEFINED(c.position)"
        params: dict[str, object] = {"@c": conversation_id}
        if keep:
            newest_sql = (
                f"SELECT TOP @k VALUE c.position FROM c WHERE {where} ORDER BY c.position DESC"
            )
            newest = container.query(newest_sql, {**params, "@k": keep}, conversation_id)
            if len(newest) < keep:
                return 0
            where += " AND c.position < @cut"
            params["@cut"] = newest[-1]
        return self._delete_where(
            container, where, params, conversation_id, batch, _MAX_PRUNE_BATCHES
        )


def _delete_each(container: Container, items: Sequence[Mapping[str, Any]]) -> int:
    return sum(delete_unchanged(container, item) for item in items)
