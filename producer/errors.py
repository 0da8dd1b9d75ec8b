"""Errors the producer raises on top of the storage hierarchy."""

from __future__ import annotations

from storage.errors import StorageError


class PublishError(StorageError):
    """The broker did not confirm the op. `may_be_published` says whether it may be queued
    anyway (a request sent, its answer lost); when False, nothing was published."""

    def __init__(self, message: str, *, may_be_published: bool = False) -> None:
        super().__init__(message)
        self.may_be_published = may_be_published


class BufferFullError(PublishError):
    """A buffered producer's buffer stayed full for `buffer_timeout`: this save was not taken."""


class DeadLetteredError(StorageError):
    """An op was dead-lettered instead of applied; `op_id` and `error` say which and why."""

    def __init__(self, op_id: str, error: str) -> None:
        super().__init__(f"op {op_id} was dead-lettered: {error}")
        self.op_id = op_id
        self.error = error
