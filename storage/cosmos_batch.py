"""Transactional batches: one request for up to 100 operations on one logical partition."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pydantic_core
from azure.cosmos import exceptions

from .cosmos_items import Container, delete_unchanged, to_item
from .records import Record

BATCH = 100  # operations per transactional batch: Cosmos DB's limit
BATCH_BYTES = 1_500_000  # and items per batch, below its 2 MB request limit


def create_records(
    container: Container, recs: list[Record]
) -> list[tuple[Record, dict[str, Any]]] | None:
    """Create one partition's new records in transactional batches: one request per batch
    (at most 100 items and `BATCH_BYTES`) instead of one per record.

    None if a batch failed (an item was created meanwhile: 409) or an item is too large for
    one: the records are then written one by one, each deciding again from what is stored,
    so a batch applied in part changes nothing. (Replacing stored items in a batch works on
    Cosmos DB, but the test server cannot run replaces in a batch, so they go one by one.)
    """
    items = [(rec, to_item(container.layout, rec)) for rec in recs]
    sizes = [len(pydantic_core.to_json(item)) for _, item in items]
    if max(sizes, default=0) > BATCH_BYTES:
        return None
    written: list[tuple[Record, dict[str, Any]]] = []
    for batch in _batches(items, sizes):
        operations = [("create", (item,)) for _, item in batch]
        try:
            results = container.proxy.execute_item_batch(
                operations, partition_key=recs[0].partition
            )
        except exceptions.CosmosBatchOperationError:
            return None
        written += [(rec, r["resourceBody"]) for (rec, _), r in zip(batch, results, strict=True)]
    return written


def delete_unchanged_items(container: Container, items: Sequence[Mapping[str, Any]]) -> int:
    """Delete `items` of one logical partition that did not change since they were read (etag);
    how many this call deleted. One request per 100 items, as `delete_unchanged` decides.

    A batch fails whole on Cosmos DB when one item changed or is gone: the items it did not
    delete (424, not attempted or rolled back) are then deleted one by one.
    """
    if len(items) == 1:
        return int(delete_unchanged(container, items[0]))
    deleted = 0
    for batch in _batches(list(items), [0] * len(items)):
        operations = [("delete", (i["id"],), {"if_match_etag": i["_etag"]}) for i in batch]
        try:
            container.proxy.execute_item_batch(
                operations, partition_key=batch[0][container.key_field]
            )
        except exceptions.CosmosBatchOperationError as exc:
            statuses = [int(r.get("statusCode", 424)) for r in exc.operation_responses]
            deleted += sum(200 <= status < 300 for status in statuses)
            deleted += sum(
                delete_unchanged(container, item)
                for item, status in zip(batch, statuses, strict=True)
                if status == 424
            )
        else:
            deleted += len(batch)
    return deleted


def _batches(entries: list[Any], sizes: list[int]) -> Iterator[list[Any]]:
    """`entries` in runs of at most `BATCH`, and of at most `BATCH_BYTES` by `sizes`."""
    batch: list[Any] = []
    total = 0
    for entry, size in zip(entries, sizes, strict=True):
        if batch and (len(batch) == BATCH or total + size > BATCH_BYTES):
            yield batch
            batch, total = [], 0
        batch.append(entry)
        total += size
    if batch:
        yield batch
