"""The queue's wire format, shared by the producer and the worker: task messages and their ids.

A message is a Celery protocol-v2 task message exactly as kombu's Redis transport stores
it, so a stock `celery worker` consumes it; we build and parse it ourselves because
`send_task` costs several times a plain LPUSH.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

import orjson

from storage.ops import MAX_SAVE_BYTES
from storage.payload import decode_plain

from . import tracing
from .keys import QUEUE

TASK_NAME = "agentstore.apply"
# Ops per message: one message is one task, and bounded in size.
MAX_OPS_PER_MESSAGE = 500
# Several ops share a message only up to this; at 4 UTF-8 bytes per character at most, such
# a message is never larger than the largest single save (`MAX_SAVE_BYTES`).
MAX_MESSAGE_CHARS = MAX_SAVE_BYTES // 4

# (message id, message, op ids): messages ready to publish, with the ops each carries.
Batch = list[tuple[str, bytes, list[str]]]

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
_MESSAGE_ID_RE = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
_EMBED = b'{"callbacks":null,"errbacks":null,"chain":null,"chord":null}'
_ORIGIN = json.dumps(f"agentstore@{socket.gethostname()}")[1:-1]

# Derived from what Celery 5's `send_task` writes to the list (`LRANGE agentstore 0 -1`).
# `argsrepr` is a count, not the payload: the worker logs it on every received task. The
# trace header, if any, goes before it: the worker's batch script finds `argsrepr` near the end.
# `published` (ours, Unix time) is when the producer published it: the worker's apply lag
# and the age of the oldest pending message are measured from it.
_TEMPLATE = (
    '{"body":"%s","content-encoding":"utf-8","content-type":"application/json",'
    '"headers":{"lang":"py","task":"' + TASK_NAME + '","id":"%s",%s"shadow":null,'
    '"eta":null,"expires":null,"group":null,"group_index":null,"retries":0,'
    '"timelimit":[null,null],"root_id":"%s","parent_id":null,"published":%.3f,'
    '"argsrepr":"<%d ops>",'
    '"kwargsrepr":"{}","origin":"' + _ORIGIN + '","ignore_result":true,'
    '"replaced_task_nesting":0,"stamped_headers":null,"stamps":{}},'
    '"properties":{"correlation_id":"%s","reply_to":"","delivery_mode":2,'
    '"delivery_info":{"exchange":"","routing_key":"' + QUEUE + '"},"priority":0,'
    '"body_encoding":"base64","delivery_tag":"%s"}}'
).encode()
# Filled in by position, as bytes: body, id, trace header, id, published, ops, id, id.


def new_message_id() -> str:
    return os.urandom(16).hex()


def is_message_id(value: str) -> bool:
    return bool(_MESSAGE_ID_RE.match(value))


def build_message(
    message_id: str,
    op_jsons: list[str],
    traces: list[tracing.Carrier | None] | None = None,
) -> bytes:
    """The message carrying the ops (each already JSON text) as the task's single argument,
    and `traces`, each op's trace context or None (`broker.tracing`), if any is given.

    The delivery tag is the message id, so a republished copy and a stranded `unacked` copy
    share one tag and acknowledging either clears both.
    """
    if not _MESSAGE_ID_RE.match(message_id):
        raise ValueError("message id must be 1-64 characters from [0-9A-Za-z_-]")
    body = b"[[[%s]],{},%s]" % (",".join(op_jsons).encode(), _EMBED)
    header = b""
    if traces is not None and any(traces):
        if len(traces) != len(op_jsons):
            raise ValueError("one trace context (or None) per op")
        header = f'"{tracing.HEADER}":{json.dumps(traces, separators=(",", ":"))},'.encode()
    mid = message_id.encode()
    return _TEMPLATE % (
        base64.b64encode(body),
        mid,
        header,
        mid,
        time.time(),
        len(op_jsons),
        mid,
        mid,
    )


def build_messages(
    op_ids: list[str],
    op_jsons: list[str],
    max_ops: int = MAX_OPS_PER_MESSAGE,
    traces: list[tracing.Carrier | None] | None = None,
) -> Batch:
    """The ops split in order into messages, each under a new message id, of at most
    `max_ops` ops and `MAX_MESSAGE_CHARS` characters (an op larger than that goes alone);
    `traces`, if given, has each op's trace context or None."""
    batch: Batch = []
    start = 0
    while start < len(op_ids):
        end, size = start, 0
        while end < len(op_ids) and end - start < max_ops:
            length = len(op_jsons[end])
            if end > start and size + length > MAX_MESSAGE_CHARS:
                break
            size += length
            end += 1
        mid = new_message_id()
        part = None if traces is None else traces[start:end]
        batch.append((mid, build_message(mid, op_jsons[start:end], part), op_ids[start:end]))
        start = end
    return batch


class MalformedMessage(Exception):
    """A queue entry that is not one of our task messages; `message_id` if one was readable."""

    def __init__(self, reason: str, message_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message_id = message_id


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    ops: list[Any]
    # Each op's trace context or None, if the message has a usable trace header.
    traces: list[tracing.Carrier | None] | None = None
    published: float | None = None  # the producer's clock; None from other publishers
    # `storage.payload.decode_plain` found the body plain: its payloads need no re-check
    # but their depth (`storage.ops.parse_op`).
    plain: bool = False


def published_at(value: object) -> float | None:
    """A message's `published` header as a time, or None if it is missing or unusable."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def message_id_of(raw: bytes | str) -> str | None:
    """The id in a raw message's headers, or None if it has none we can read."""
    try:
        envelope = json.loads(raw)
        mid = envelope["headers"]["id"]
    except (ValueError, TypeError, KeyError):
        return None
    return mid if isinstance(mid, str) and _MESSAGE_ID_RE.match(mid) else None


def parse_message(raw: bytes | str) -> Message:
    """Read a raw queue entry; raise `MalformedMessage` unless it is our JSON task message.

    Only JSON is ever decoded: a pickle (or any other) content type is refused by name.
    """
    try:
        envelope = orjson.loads(raw)  # ~3x the json module's speed on a message
    except orjson.JSONDecodeError:
        # What orjson refuses (NaN, a lone surrogate, text that is not UTF-8, malformed
        # JSON) the json module reads, or refuses as it always did. The numbers orjson
        # reads differently (integers beyond 64 bits) are in headers this code never uses:
        # the ops are in the body, decoded on its own (`storage.payload.decode_plain`).
        try:
            envelope = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise MalformedMessage("message is not JSON") from None
    if not isinstance(envelope, dict):
        raise MalformedMessage("message is not a JSON object")
    headers = envelope.get("headers")
    properties = envelope.get("properties")
    if not isinstance(headers, dict) or not isinstance(properties, dict):
        raise MalformedMessage("message has no headers/properties (not Celery protocol 2)")
    mid = headers.get("id")
    message_id = mid if isinstance(mid, str) and _MESSAGE_ID_RE.match(mid) else None
    if message_id is None:
        raise MalformedMessage("message has no valid id header")
    content_type = envelope.get("content-type")
    if content_type != CONTENT_TYPE:
        raise MalformedMessage(
            f"refused content type {str(content_type)[:100]!r}; only {CONTENT_TYPE} is accepted",
            message_id,
        )
    if headers.get("task") != TASK_NAME:
        raise MalformedMessage(f"unknown task {str(headers.get('task'))[:100]!r}", message_id)
    ops, plain = _decode_body(envelope, properties, message_id)
    return Message(
        message_id,
        ops,
        tracing.carriers_of(headers.get(tracing.HEADER), len(ops)),
        published_at(headers.get("published")),
        plain,
    )


def _decode_body(
    envelope: dict[str, Any], properties: dict[str, Any], mid: str
) -> tuple[list[Any], bool]:
    body = envelope.get("body")
    if not isinstance(body, str):
        raise MalformedMessage("message body is missing", mid)
    if properties.get("body_encoding") != "base64":
        try:
            decoded, plain = json.loads(body), False
        except ValueError:
            raise MalformedMessage("message body is not JSON", mid) from None
        return ops_of_body(decoded, mid), plain
    try:
        raw = base64.b64decode(body, validate=True)
        decoded, plain = decode_plain(raw)
    except (binascii.Error, UnicodeDecodeError):
        raise MalformedMessage("message body is not valid base64 UTF-8", mid) from None
    except ValueError:
        raise MalformedMessage("message body is not JSON", mid) from None
    return ops_of_body(decoded, mid), plain


def ops_of_body(decoded: object, mid: str | None = None) -> list[Any]:
    """The op list from a decoded body `[[ops], {}, embed]`."""
    if (
        not isinstance(decoded, list)
        or len(decoded) != 3
        or not isinstance(decoded[0], list)
        or len(decoded[0]) != 1
        or decoded[1] != {}
    ):
        raise MalformedMessage("task arguments must be exactly one list of ops", mid)
    return ops_of_args(decoded[0][0], mid)


def ops_of_args(ops: object, mid: str | None = None) -> list[Any]:
    if not isinstance(ops, list) or not ops:
        raise MalformedMessage("task argument must be a non-empty list of ops", mid)
    return ops
