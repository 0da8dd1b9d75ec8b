"""Errors of the queue protocol, on top of the storage hierarchy."""

from __future__ import annotations

from storage.errors import StorageError


class PublishError(StorageError):
    """The broker did not confirm the op. `may_be_published` says whether it may be queued
    anyway (a request sent, its answer lost); when False, nothing was published."""

    def __init__(self, message: str, *, may_be_published: bool = False) -> None:
        super().__init__(message)
        self.may_be_published = may_be_published
