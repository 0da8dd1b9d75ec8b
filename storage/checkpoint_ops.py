"""The ops of LangGraph checkpoints: puts, pending writes and deletes of one thread's rows.

Serialised values travel as LangGraph's serializer made them: a type tag and the bytes in
base64. The worker stores them as they are and never deserialises one.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from .errors import ValidationError
from .op_base import OpBase, Strict, id_field

# Raw bytes of serialised values per put (checkpoint, metadata and channel values), at most;
# the same bound as the largest save, so a put fits in one task message as any save does.
MAX_CHECKPOINT_BYTES = 16_000_000
MAX_CHECKPOINT_B64 = (MAX_CHECKPOINT_BYTES + 2) // 3 * 4
# A checkpoint's own row (without its channel values) is never split: one Cosmos DB item.
MAX_HEAD_B64 = 1_500_000
MAX_NS_CHARS = 255


def _check_ns(value: object) -> str:
    # The root namespace is "": unlike other ids a namespace may be empty.
    if not isinstance(value, str):
        raise ValidationError(f"checkpoint_ns must be a string, got {type(value).__name__}")
    if len(value) > MAX_NS_CHARS or "\x00" in value:
        raise ValidationError(f"checkpoint_ns must be at most {MAX_NS_CHARS} characters, no NUL")
    return value


Namespace = Annotated[str, BeforeValidator(_check_ns)]


class Blob(Strict):
    """One serialised value: the serializer's type tag and its bytes as base64."""

    type: str
    data: str


class ChannelBlob(Blob):
    channel: str
    version: str


class WriteBlob(Blob):
    idx: int
    channel: str


def _b64_chars(blobs: list[Blob]) -> int:
    return sum(len(b.data) for b in blobs)


def _check_size(blobs: list[Blob], what: str) -> None:
    size = _b64_chars(blobs)
    if size > MAX_CHECKPOINT_B64:
        raise ValidationError(
            f"{what} holds about {size * 3 // 4:,} bytes of serialised values; the limit is "
            f"{MAX_CHECKPOINT_BYTES:,} bytes per call: keep large values out of the graph state"
        )


class PutCheckpointArgs(Strict):
    thread_id: Annotated[str, id_field("thread_id")]
    checkpoint_ns: Namespace
    checkpoint_id: Annotated[str, id_field("checkpoint_id")]
    parent_checkpoint_id: str | None
    checkpoint: Blob
    metadata: Blob
    # The checkpoint's channel versions in plain JSON too: what prune keeps, without
    # deserialising anything.
    channel_versions: dict[str, str]
    # The DeltaChannels LangGraph rebuilds from the ancestors' writes at this checkpoint (its
    # metadata's `counters_since_delta_snapshot`): prune keeps those ancestors.
    delta_channels: list[str] = Field(default_factory=list)
    run_id: str | None = None  # the metadata's, for delete_for_runs
    blobs: list[ChannelBlob]

    @model_validator(mode="after")
    def _fits(self) -> PutCheckpointArgs:
        _check_size([self.checkpoint, self.metadata, *self.blobs], "put")
        head = len(self.checkpoint.data) + len(self.metadata.data)
        if head > MAX_HEAD_B64:
            raise ValidationError(
                f"put: the checkpoint and its metadata without channel values are about "
                f"{head * 3 // 4:,} bytes serialised; the limit is {MAX_HEAD_B64 * 3 // 4:,}"
            )
        return self


class PutWritesArgs(Strict):
    thread_id: Annotated[str, id_field("thread_id")]
    checkpoint_ns: Namespace
    checkpoint_id: Annotated[str, id_field("checkpoint_id")]
    task_id: Annotated[str, id_field("task_id")]
    task_path: str
    writes: list[WriteBlob]

    @model_validator(mode="after")
    def _fits(self) -> PutWritesArgs:
        _check_size(list(self.writes), "put_writes")
        return self


class ThreadKey(Strict):
    thread_id: Annotated[str, id_field("thread_id")]


class CheckpointRows(Strict):
    """Rows of one thread to delete, as the saver found them (chunks: items they span)."""

    thread_id: Annotated[str, id_field("thread_id")]
    checkpoints: list[tuple[str, str]] = Field(default_factory=list)  # (ns, checkpoint id)
    blobs: list[tuple[str, str, str, int]] = Field(
        default_factory=list
    )  # (ns, channel, version, chunks)
    writes: list[tuple[str, str, str, int, int]] = Field(default_factory=list)
    # writes: (ns, checkpoint id, task, idx, chunks)


class PutCheckpoint(OpBase):
    op: Literal["put_checkpoint"]
    args: PutCheckpointArgs


class PutWrites(OpBase):
    op: Literal["put_writes"]
    args: PutWritesArgs


class DeleteThread(OpBase):
    op: Literal["delete_thread"]
    args: ThreadKey


class DeleteCheckpointRows(OpBase):
    op: Literal["delete_checkpoint_rows"]
    args: CheckpointRows


CheckpointOp = PutCheckpoint | PutWrites | DeleteThread | DeleteCheckpointRows
CHECKPOINT_OP_NAMES = ("put_checkpoint", "put_writes", "delete_thread", "delete_checkpoint_rows")
