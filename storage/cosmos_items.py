"""Records as Cosmos DB items: containers, item fields, one item's ordered write and delete."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from azure.core import MatchConditions
from azure.cosmos import ContainerProxy, exceptions

from .checkpoints import keeps_first
from .errors import ConfigError, TransientStorageError
from .records import KIND_SPECS, Kind, Record


@dataclass(frozen=True, slots=True)
class Layout:
    container: str
    partition_field: str  # what reads filter on, and the partition key of new containers
    sub_id_field: str


LAYOUTS: dict[Kind, Layout] = {
    kind: Layout(spec.name, spec.partition, spec.sub_id) for kind, spec in KIND_SPECS.items()
}
# Payloads are stored as JSON text, not as a nested document: Cosmos DB parses JSON numbers
# as doubles and returns 1.0 as 1, so only text gives back exactly what was saved. Reads
# never query inside a payload; retention's finished-task filter reads the copied `status`.
INDEXING_POLICY = {
    "indexingMode": "consistent",
    "automatic": True,
    "includedPaths": [{"path": "/*"}],
    "excludedPaths": [{"path": "/data/*"}, {"path": '/"_etag"/?'}],
}
# Items written before deletes existed have no `deleted` field: they are live.
LIVE = "(NOT IS_DEFINED(c.deleted) OR c.deleted = false)"
# Concurrent writers can make an etag stale again and again; past this we call it transient.
MAX_WRITE_ATTEMPTS = 10


@dataclass(frozen=True, slots=True)
class Container:
    proxy: ContainerProxy
    layout: Layout
    key_field: str  # the item field the container is partitioned on

    @property
    def aligned(self) -> bool:
        """Partitioned on the field reads filter on (not, e.g., the seed's `/id`)."""
        return self.key_field == self.layout.partition_field

    @property
    def handle(self) -> str:
        """The projection `delete_unchanged` needs: id, etag and partition key value."""
        key = "" if self.key_field == "id" else f", c.{self.key_field}"
        return f"c.id, c._etag{key}"

    def query(self, sql: str, params: Mapping[str, object], partition: str | None) -> list[Any]:
        parameters: list[dict[str, object]] = [{"name": k, "value": v} for k, v in params.items()]
        if partition is not None and self.aligned:
            return list(self.proxy.query_items(sql, parameters=parameters, partition_key=partition))
        # Partitioned on another field (the seed's `/id`), or a scan: the query spans partitions.
        return list(
            self.proxy.query_items(sql, parameters=parameters, enable_cross_partition_query=True)
        )


def to_item(layout: Layout, rec: Record) -> dict[str, Any]:
    # Every field on every item, so any usable partition key path finds its value.
    return {
        "id": rec.row_id,
        layout.partition_field: rec.partition,
        layout.sub_id_field: rec.sub_id,
        "version": rec.version,
        "position": rec.position,
        "deleted": rec.deleted,
        "data": encode(rec.data),
        **({"status": rec.data["status"]} if "status" in rec.data and rec.kind == "task" else {}),
    }


def encode(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def decode(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    return data


def from_item(kind: Kind, layout: Layout, item: Mapping[str, Any]) -> Record:
    pf, sf = layout.partition_field, layout.sub_id_field
    return Record(
        kind,
        item["id"],
        item[pf],
        decode(item["data"]),
        item["version"],
        item["position"],
        item[sf],
        bool(item.get("deleted", False)),
    )


def write(
    container: Container, rec: Record, current: dict[str, Any] | None = None, fresh: bool = False
) -> dict[str, Any] | None:
    """Store `rec` unless a newer version is stored; `fresh`: `current` is what is stored.

    Returns the item as stored (with its `_etag`) if this call wrote it, else None.
    """
    item = to_item(container.layout, rec)
    proxy, key = container.proxy, item[container.key_field]
    # Messages and transactions are usually new: create first and read only on conflict.
    fresh = fresh or rec.kind in ("conversation", "transaction")
    for _ in range(MAX_WRITE_ATTEMPTS):
        if not fresh:
            current = read(proxy, item["id"], key)
        fresh = False
        if current is None:
            try:
                created: dict[str, Any] = proxy.create_item(item)
                return created
            except exceptions.CosmosResourceExistsError:
                if rec.kind == "conversation":
                    return None  # messages are immutable: the stored copy is this one
                continue
        wanted = merge(rec.kind, current, item)
        if wanted is None:
            return None
        try:
            replaced: dict[str, Any] = proxy.replace_item(
                item["id"],
                wanted,
                etag=current["_etag"],
                match_condition=MatchConditions.IfNotModified,
            )
            return replaced
        except exceptions.CosmosAccessConditionFailedError:
            continue  # written by someone else meanwhile: read it again
        except exceptions.CosmosResourceNotFoundError:
            current, fresh = None, True
    raise TransientStorageError(
        f"Cosmos DB: gave up writing {rec.kind} {rec.row_id!r} after {MAX_WRITE_ATTEMPTS} "
        "attempts; concurrent writers kept changing it. Retry the save."
    )


def stored_version(container: Container, rec: Record) -> str | None:
    """The version stored at `rec`'s row (deleted or not), or None: one point read."""
    key = to_item(container.layout, replace(rec, data={}))[container.key_field]
    item = read(container.proxy, rec.row_id, key)
    return None if item is None else str(item["version"])


def read(proxy: ContainerProxy, item_id: str, key: str) -> dict[str, Any] | None:
    try:
        item: dict[str, Any] = proxy.read_item(item_id, partition_key=key)
    except exceptions.CosmosResourceNotFoundError:
        return None
    return item


def delete_unchanged(container: Container, item: Mapping[str, Any]) -> bool:
    """Delete `item` if it is still as it was read (same etag); False if it changed or is gone.

    A 404 means someone else deleted it; a 412 that it was rewritten since, so whoever
    decided it should go must look at it again.
    """
    try:
        container.proxy.delete_item(
            item["id"],
            partition_key=item[container.key_field],
            etag=item["_etag"],
            match_condition=MatchConditions.IfNotModified,
        )
    except (exceptions.CosmosResourceNotFoundError, exceptions.CosmosAccessConditionFailedError):
        return False
    return True


def merge(kind: Kind, current: dict[str, Any], item: dict[str, Any]) -> dict[str, Any] | None:
    """What to store over `current` (None: keep it), as PostgreSQL's upserts decide."""
    newer = item["version"] > current["version"]
    if kind != "transaction":
        old_deleted, new_deleted = bool(current.get("deleted")), bool(item.get("deleted"))
        first = keeps_first(kind, old_deleted, new_deleted, lambda: decode(item["data"]))
        return item if newer and not first else None
    # A transaction keeps the place of its first save, whichever version arrives first.
    position = min(current["position"], item["position"])
    if newer:
        return {**item, "position": position}
    if position == current["position"]:
        return None
    return {**{k: v for k, v in current.items() if not k.startswith("_")}, "position": position}


def key_field(layout: Layout, paths: list[str], usable: tuple[str, ...] | None = None) -> str:
    """The item field a container with partition key `paths` is partitioned on."""
    usable = usable or ("id", layout.partition_field, layout.sub_id_field)
    field = paths[0].lstrip("/") if len(paths) == 1 else ""
    if field not in usable:
        raise ConfigError(
            f"Cosmos DB container {layout.container!r} is partitioned on {paths}; agentstore "
            f"needs one path among {['/' + f for f in usable]}. Use another "
            "COSMOS_DATABASE_NAME or recreate the container."
        )
    return field
