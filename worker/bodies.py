"""Task bodies as the pool child's JSON decoder reads them, and which of them were plain.

The Celery task gets its op list already decoded; the decoder notes here whether
`storage.payload.decode_plain` found the body plain, so that the batch can skip re-checking
its payloads (`storage.ops.parse_op`) for the message Celery delivered too.
"""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

from storage.payload import decode_plain

# The op list of the task body this thread decoded last, if `decode_plain` found it plain.
_plain_body = threading.local()


def decode_task_body(data: bytes | str) -> Any:
    """A task body as JSON, noting whether `decode_plain` found it plain (`was_plain`)."""
    _plain_body.ops = None
    if isinstance(data, str):
        return json.loads(data)
    try:
        decoded, plain = decode_plain(data)
    except UnicodeDecodeError:
        return json.loads(data)  # which detects UTF-16 and UTF-32 as before, or refuses
    if plain:
        with contextlib.suppress(TypeError, IndexError, KeyError):
            _plain_body.ops = decoded[0][0]
    return decoded


def was_plain(ops: object) -> bool:
    """Whether `ops` is the op list of the plain body this thread decoded last (once)."""
    plain = getattr(_plain_body, "ops", None) is ops and isinstance(ops, list)
    _plain_body.ops = None
    return plain
