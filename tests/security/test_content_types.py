"""JSON only: a worker refuses every other content type, whatever the payload would do.

Pickle (a payload that creates a file when unpickled) is covered by
tests/integration/test_queue.py::test_a_pickle_message_is_refused_and_never_unpickled;
these are the other serializers kombu knows, each carrying a payload that would run code.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import redis

from broker import keys, wire
from broker.deadletters import DeadLetters
from tests.integration.helpers import pending, producer, wait_until
from tests.plugin import WorkerFactory
from tests.queued import op_id_of


def _payloads(target: Path) -> dict[str, bytes]:
    command = f"touch {target}"
    return {
        # PyYAML's unsafe loader would run this; kombu registers yaml when PyYAML is installed.
        "application/x-yaml": f'!!python/object/apply:os.system ["{command}"]'.encode(),
        "application/x-msgpack": b"\x93\x91\xa4evil\x80\x80",
        "application/data": command.encode(),
        "text/plain": command.encode(),
        "application/json; charset=binary": b"c__builtin__\nopen\n(V" + str(target).encode(),
    }


def test_every_non_json_content_type_is_refused_and_dead_lettered(
    broker: str, database: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    target = tmp_path / "pwned"
    worker = start_worker(broker, database)
    client = redis.Redis.from_url(broker)
    dlq = DeadLetters(broker)
    payloads = _payloads(target)
    try:
        for n, (content_type, body) in enumerate(payloads.items()):
            message = json.loads(wire.build_message(f"evil{n}", ["{}"]))
            message["content-type"] = content_type
            message["content-encoding"] = "binary"
            message["body"] = base64.b64encode(body).decode()
            client.lpush(keys.QUEUE, json.dumps(message))
        with producer(broker, database) as prod:
            op_id = op_id_of(prod.save_state("agent", "after", {"still": "applied"}))
            prod.wait([op_id], timeout=30)
            assert prod.get_state("agent", "after") == {"still": "applied"}
        wait_until("every dead letter", lambda: dlq.count() == len(payloads), 15)
        for n, content_type in enumerate(payloads):
            record = dlq.get(f"evil{n}")
            assert record is not None, content_type
            assert record["error"], content_type
        assert not target.exists()
        assert worker.alive() and pending(client) == 0
    finally:
        dlq.close()
        client.close()
