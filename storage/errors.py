"""The error hierarchy every backend and the producer raise."""


class StorageError(Exception):
    """A store could not do what was asked (connection, server error, exhausted retries)."""


class TransientStorageError(StorageError):
    """A failure worth retrying: lost connection, serialization failure, throttling, timeout."""


class StoreUnavailableError(TransientStorageError):
    """The store could not be reached (refused, unknown host or database, no answer); the
    ops are not at fault, so workers wait for it to come back instead of dead-lettering."""


class ConfigError(StorageError, ValueError):
    """The configuration is missing or malformed; the message names the variable to fix."""


class ValidationError(StorageError, ValueError):
    """An argument is not acceptable (bad id, non-JSON payload, too large); nothing was written."""


class SchemaNotReadyError(StorageError):
    """The store answers but its schema is missing or not fully migrated, and the client was
    asked not to create it (`create_schema=False`); any client opened normally migrates it."""
