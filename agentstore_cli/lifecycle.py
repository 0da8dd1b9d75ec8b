"""`agentstore erase` and `agentstore prune`: deleting on request and by retention policy."""

from __future__ import annotations

import click

from storage import checkpoint_reads
from storage.base import StorageBackend
from storage.ops import Op, make_op
from storage.retention import RetentionPolicy

from .context import read_settings
from .stores import open_store


def _store(ctx: click.Context) -> StorageBackend:
    return open_store(read_settings(ctx), "store")


@click.command()
@click.option("--agent", "agent_id", help="Erase every state and task of this agent.")
@click.option("--conversation", "conversation_id", help="Erase this conversation's history.")
@click.option("--case", "case_id", help="Erase every transaction of this case.")
@click.option("--thread", "thread_id", help="Erase every LangGraph checkpoint of this thread.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def erase(
    ctx: click.Context,
    agent_id: str | None,
    conversation_id: str | None,
    case_id: str | None,
    thread_id: str | None,
    yes: bool,
) -> None:
    """Erase everything of one agent, conversation, case or thread, now, in the store itself.

    Saves of it still in the queue that were made before the erase stay erased when they
    arrive; saves made after it are stored again.
    """
    chosen = [v for v in (agent_id, conversation_id, case_id, thread_id) if v is not None]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --agent, --conversation, --case, --thread")
    with _store(ctx) as store:
        op: Op
        if agent_id is not None:
            states, tasks = store.list_states(agent_id), store.list_tasks(agent_id)
            what = f"{len(states)} state(s) and {len(tasks)} task(s) of agent {agent_id!r}"
            op = make_op("erase_agent", {"agent_id": agent_id})
        elif conversation_id is not None:
            count = len(store.get_conversation_history(conversation_id))
            what = f"{count} message(s) of conversation {conversation_id!r}"
            op = make_op("delete_conversation", {"conversation_id": conversation_id})
        elif thread_id is not None:
            count = len(checkpoint_reads.checkpoints(store, thread_id, None))
            what = f"{count} checkpoint(s) of thread {thread_id!r}"
            op = make_op("delete_thread", {"thread_id": thread_id})
        else:
            assert case_id is not None
            count = len(store.get_transactions(case_id))
            what = f"{count} transaction(s) of case {case_id!r}"
            op = make_op("delete_transactions", {"case_id": case_id, "ids": None})
        if not yes:
            click.confirm(f"Erase {what} for good?", abort=True, err=True)
        store.apply([op])
    click.echo(f"erased {what}")


@click.command()
@click.option("--dry-run", is_flag=True, help="Count what would be removed; change nothing.")
@click.pass_context
def prune(ctx: click.Context, dry_run: bool) -> None:
    """Apply the retention settings (see .env.example) and drop expired tombstones.

    Workers do this periodically (AGENTSTORE_PRUNE_INTERVAL_S); this runs it now.
    """
    configured = read_settings(ctx)
    policy = RetentionPolicy.from_settings(configured)
    with open_store(configured, "store") as store:
        counts = store.prune(policy, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for category, count in counts.items():
        click.echo(f"{category}: {verb} {count:,}")
    click.echo(f"total: {verb} {sum(counts.values()):,}")
