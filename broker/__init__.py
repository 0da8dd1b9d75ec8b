"""The queue protocol the producer, the worker and the CLI share; none of them imports another.

`keys` names every Redis key, `wire` builds and parses task messages, `connection` connects
to Redis, `publisher` queues messages durably, `deadletters` stores and manages the ops a
worker could not apply, `errors` holds `PublishError`; the Lua they run is in `*.lua`.
"""
