"""Every Redis key the queue protocol uses, for the producer, the worker and the CLI alike."""

from __future__ import annotations

# The queue itself: a list kombu's Redis transport consumes (and its routing key).
QUEUE = "agentstore"

# `pending` (zset: message id -> publish sequence) and `messages` (hash: message id ->
# message) hold every published message until a worker has applied it; the reaper
# republishes those that left the queue and were never confirmed.
SEQ_KEY = "agentstore:seq"
PENDING_KEY = "agentstore:pending"
MESSAGES_KEY = "agentstore:messages"
# Hash message id -> when the reaper first saw it out of the queue, or the last heartbeat
# of the worker applying it.
OUT_SINCE_KEY = "agentstore:out_since"
REAPER_LOCK_KEY = "agentstore:reaper:lock"
# Held by the one worker running a retention round.
PRUNE_LOCK_KEY = "agentstore:prune:lock"
# Ops applied since the broker's data began: a counter `agentstore stats` samples for ops/s.
APPLIED_KEY = "agentstore:applied"
# Confirmations: zset message id -> time a worker settled it (applied or dead-lettered),
# kept for AGENTSTORE_CONFIRM_TTL_S so `wait()` tells "applied" from "lost by the broker".
DONE_KEY = "agentstore:done"
# Set (with a short expiry) while a reader waits for ops to be applied: a worker then closes
# the batch it is filling as soon as the queue runs dry, instead of waiting out
# AGENTSTORE_BATCH_WAIT_MS.
HURRY_KEY = "agentstore:hurry"
# Lists `<prefix><host>:<main pid>`: the counts of each batch a worker's processes settled,
# appended by the settle itself, for the main process to move into its metrics.
TALLIES_PREFIX = "agentstore:tallies:"
# Dead letters: hash id -> JSON record, plus a zset id -> time of the last failure for listing.
DLQ_KEY = "agentstore:dlq"
DLQ_INDEX_KEY = "agentstore:dlq:index"
# kombu's Redis transport keeps delivered, unacknowledged messages in this hash.
KOMBU_UNACKED_KEY = "unacked"
