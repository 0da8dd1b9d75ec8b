"""Trace context across the queue, on a real redis-server: the save's span in the message,
the batch span linked to it, dead letters keeping it; and nothing at all without a provider."""

from __future__ import annotations

import json
from typing import Any

import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanLimits

from broker import deadletters, keys, tracing, wire
from producer import Producer
from storage.ops import make_op
from tests.queued import op_id_of, pop_message
from tests.tracing import named, recording
from tests.unit.flaky import FlakyStore
from worker.apply import BatchApplier
from worker.settings import WorkerSettings

URL = "redis://127.0.0.1:6379/0"


def _applier(store: FlakyStore, rds: redis.Redis) -> BatchApplier:
    settings = WorkerSettings(batch_wait_ms=0, retry_max_s=5)
    return BatchApplier(lambda: store, rds, settings, sleep=lambda s: None)


def _deliver(rds: redis.Redis, store: FlakyStore) -> Any:
    """What Celery does: pop one message and run the task with its ops and trace header."""
    message = pop_message(rds)
    return _applier(store, rds).run(message.id, message.ops, message.traces)


def _ids(context: trace.SpanContext) -> tuple[int, int]:
    return context.trace_id, context.span_id


def test_without_a_provider_nothing_is_traced_and_messages_are_unchanged(
    rds: redis.Redis,
) -> None:
    with tracing.save_span("save_state") as carrier:
        assert carrier is None
    prod = Producer(broker_url=URL)
    op_id = op_id_of(prod.save_state("a", "s", {"x": 1}))
    raw = rds.lindex(keys.QUEUE, 0)
    assert raw is not None and tracing.HEADER.encode() not in raw
    message = wire.parse_message(raw)
    assert message.traces is None
    rebuilt = wire.build_message(op_id, [json.dumps(message.ops[0], separators=(",", ":"))])

    def without_publish_time(raw_message: bytes | str) -> dict[str, Any]:
        envelope: dict[str, Any] = json.loads(raw_message)
        envelope["headers"].pop("published")
        return envelope

    assert without_publish_time(raw) == without_publish_time(rebuilt)


def test_a_save_span_is_a_child_of_the_callers_span_and_travels_in_its_message(
    rds: redis.Redis,
) -> None:
    with recording() as exporter:
        prod = Producer(broker_url=URL)
        with trace.get_tracer("agent").start_as_current_span("agent step"):
            prod.save_state("a", "s", {"x": 1})
        spans = exporter.get_finished_spans()
    (save,) = named(spans, "agentstore.save_state")
    (step,) = named(spans, "agent step")
    assert save.parent is not None and save.parent.span_id == step.context.span_id
    message = pop_message(rds)
    assert message.traces is not None
    (carrier,) = message.traces
    assert carrier is not None
    assert carrier["traceparent"].startswith(
        f"00-{save.context.trace_id:032x}-{save.context.span_id:016x}-"
    )


def test_a_batch_span_links_the_span_of_every_save_it_applied(rds: redis.Redis) -> None:
    with recording() as exporter:
        prod = Producer(broker_url=URL)
        durable = [prod.save_state("a", f"d{i}", {"i": i}) for i in range(2)]
        buffered = Producer(broker_url=URL, linger_ms=1000, max_batch=3)
        in_one_message = [buffered.save_task("a", f"t{i}", {"i": i}) for i in range(3)]
        buffered.close()  # publishes the three in one message
        store = FlakyStore()
        batch = _deliver(rds, store)
        spans = exporter.get_finished_spans()
    assert len(batch.ops) == 5 and rds.llen(keys.QUEUE) == 0
    saves = named(spans, "agentstore.save_state") + named(spans, "agentstore.save_task")
    (applied,) = named(spans, "agentstore.apply_batch")
    assert len(saves) == 5 and set(batch.traces) == {*durable, *in_one_message}
    assert {_ids(link.context) for link in applied.links} == {_ids(s.context) for s in saves}
    assert applied.parent is None
    assert applied.attributes is not None and applied.attributes["agentstore.ops"] == 5


def test_a_dead_letter_keeps_its_saves_trace_and_a_replay_carries_it_again(
    rds: redis.Redis,
) -> None:
    with recording() as exporter:
        prod = Producer(broker_url=URL)
        op_id = op_id_of(prod.save_state("a", "s", {"x": 1}))
        store = FlakyStore()
        store.poison = {op_id}
        _deliver(rds, store)
        (save,) = named(exporter.get_finished_spans(), "agentstore.save_state")
    dlq = deadletters.DeadLetters(client=rds)
    record = dlq.get(op_id)
    assert record is not None
    assert f"{save.context.trace_id:032x}" in record["trace"]["traceparent"]
    dlq._publisher = prod._publisher
    assert dlq.replay([op_id]) == 1
    replayed = pop_message(rds)
    assert replayed.traces == [record["trace"]]


def test_a_bad_trace_header_is_ignored_and_never_costs_the_save(rds: redis.Redis) -> None:
    op = make_op("save_state", {"agent_id": "a", "state_id": "s", "state": {}})
    good = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    for bad in ([good, good], [{"traceparent": 1}], "00-x", [[good]]):
        raw = wire.build_message(op.id, [op.model_dump_json()]).replace(
            b'"shadow"', f'"{tracing.HEADER}":{json.dumps(bad)},"shadow"'.encode()
        )
        message = wire.parse_message(raw)
        assert message.traces is None and len(message.ops) == 1


def test_the_batch_script_still_reads_the_op_count_of_a_traced_message() -> None:
    # `_TAKE` looks for "argsrepr" in a message's last 2 KB: the trace header goes before it.
    carrier = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    raw = wire.build_message("m", ["{}"] * 500, [carrier] * 500)
    assert raw.rfind(b'"argsrepr":"<500 ops>"') > len(raw) - 2048


def test_the_provider_check_reads_the_apis_global_as_set_tracer_provider_sets_it() -> None:
    # `broker.tracing` reads `trace._TRACER_PROVIDER` instead of calling
    # `get_tracer_provider()` per save: a later API that moved it would break this first.
    assert tracing._FAST
    assert trace._TRACER_PROVIDER is None
    with recording():
        assert trace._TRACER_PROVIDER is trace.get_tracer_provider()
        with tracing.save_span("save_state") as carrier:
            assert carrier is not None
    with tracing.save_span("save_state") as carrier:
        assert carrier is None


def test_a_save_span_that_raises_records_the_error_and_still_ends() -> None:
    with recording() as exporter:
        try:
            with tracing.save_span("save_state"):
                raise ValueError("boom")
        except ValueError:
            pass
        assert trace.get_current_span() is trace.INVALID_SPAN  # no longer current
    (span,) = named(exporter.get_finished_spans(), "agentstore.save_state")
    assert span.status.status_code is trace.StatusCode.ERROR
    assert span.status.description == "ValueError: boom"
    assert [event.name for event in span.events] == ["exception"]


def test_a_batch_of_more_saves_than_a_span_keeps_links_links_each_on_a_child_span(
    rds: redis.Redis,
) -> None:
    with recording(SpanLimits(max_links=2)) as exporter:
        prod = Producer(broker_url=URL, linger_ms=1000, max_batch=5)
        saved = [prod.save_state("a", f"s{i}", {"i": i}) for i in range(5)]
        prod.close()  # one message of five ops
        batch = _deliver(rds, FlakyStore())
        spans = exporter.get_finished_spans()
    assert len(batch.ops) == 5
    saves = named(spans, "agentstore.save_state")
    (applied,) = named(spans, "agentstore.apply_batch")
    more = named(spans, "agentstore.apply_batch.links")
    assert [len(span.links) for span in (applied, *more)] == [2, 2, 1]
    assert all(
        span.parent is not None and span.parent.span_id == applied.context.span_id for span in more
    )
    linked = [_ids(link.context) for span in (applied, *more) for link in span.links]
    assert sorted(linked) == sorted(_ids(s.context) for s in saves) and len(saves) == len(saved)
    assert applied.dropped_links == 0


def test_a_carrier_the_fast_path_does_not_read_is_linked_through_the_propagator() -> None:
    parent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    carriers = [
        {"traceparent": parent, "tracestate": "vendor=1"},  # not the plain form
        {"traceparent": parent},  # the same span again: one link
        {"traceparent": "00-" + "0" * 32 + "-" + "b" * 16 + "-01"},  # invalid: none
        {"traceparent": "00-" + "A" * 32 + "-" + "b" * 16 + "-01"},  # not lower-case hex
    ]
    with recording() as exporter:
        with tracing.batch_span(carriers, ops=4):
            pass
        (applied,) = named(exporter.get_finished_spans(), "agentstore.apply_batch")
    assert [_ids(link.context) for link in applied.links] == [
        (int("a" * 32, 16), int("b" * 16, 16))
    ]
    assert applied.links[0].context.trace_state.get("vendor") == "1"
