"""`agentstore dlq`: list, show, replay and purge dead letters."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal

import click

from . import operate
from .context import fail, read_settings

if TYPE_CHECKING:
    from broker.deadletters import DeadLetters


@click.group()
def dlq() -> None:
    """Dead letters: ops (and messages) that could not be applied."""


def _dead_letters(ctx: click.Context) -> DeadLetters:
    from broker.deadletters import DeadLetters

    dead = DeadLetters(read_settings(ctx).celery_broker_url.get_secret_value())
    ctx.call_on_close(dead.close)
    return dead


def _selection(ids: tuple[str, ...], everything: bool) -> list[str] | Literal["all"]:
    if bool(ids) == everything:
        raise click.UsageError("give dead-letter IDs or --all (not both)")
    return "all" if everything else list(dict.fromkeys(ids))


@dlq.command("list")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@click.pass_context
def dlq_list(ctx: click.Context, limit: int, offset: int, as_json: bool) -> None:
    """Dead letters, oldest failure first: id, last failure (UTC), attempts, op, error."""
    dead = _dead_letters(ctx)
    records = dead.list(limit, offset)
    for record in records:
        click.echo(json.dumps(record) if as_json else operate.summarize_dead_letter(record))
    total = dead.count()
    if not as_json:
        click.echo(f"{len(records)} shown of {total} dead letter(s)", err=True)


@dlq.command("show")
@click.argument("dead_letter_id")
@click.pass_context
def dlq_show(ctx: click.Context, dead_letter_id: str) -> None:
    """One dead letter in full, as JSON."""
    record = _dead_letters(ctx).get(dead_letter_id)
    if record is None:
        fail(ctx, f"no dead letter {dead_letter_id!r}")
    click.echo(json.dumps(record, indent=2, sort_keys=True))


def _missing(dead: DeadLetters, selection: list[str] | Literal["all"]) -> list[str]:
    if selection == "all":
        return []
    return [key for key in selection if dead.get(key) is None]


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter.")
@click.pass_context
def dlq_replay(ctx: click.Context, ids: tuple[str, ...], everything: bool) -> None:
    """Publish dead-lettered ops again (same op id and version) and remove them.

    Malformed messages cannot be replayed; they stay until purged.
    """
    selection = _selection(ids, everything)
    dead = _dead_letters(ctx)
    missing = _missing(dead, selection)
    replayed = dead.replay(selection)
    click.echo(f"replayed {replayed} op(s)")
    if missing:
        fail(ctx, f"no dead letter(s) {', '.join(missing)}")


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Purge every dead letter.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def dlq_purge(ctx: click.Context, ids: tuple[str, ...], everything: bool, yes: bool) -> None:
    """Delete dead letters for good (asks first unless --yes)."""
    selection = _selection(ids, everything)
    dead = _dead_letters(ctx)
    missing = _missing(dead, selection)
    count = dead.count() if selection == "all" else len(selection) - len(missing)
    if count and not yes:
        click.confirm(f"Delete {count} dead letter(s) for good?", abort=True, err=True)
    purged = dead.purge(selection) if count else 0
    click.echo(f"purged {purged} dead letter(s)")
    if missing:
        fail(ctx, f"no dead letter(s) {', '.join(missing)}")
