"""The `agentstore` command: export, import, migrate, health, stats, dlq, erase, prune.

Exit codes: 0 success; 1 a failed check, a configuration or storage error, a bad import
line or a migration count mismatch (one line on stderr, no traceback); 2 bad arguments;
130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import click
import redis

from storage.config import Settings, load_settings
from storage.errors import StorageError
from storage.records import STREAM_KINDS, StreamKind

from . import operate
from .lifecycle import erase, prune
from .migrate import migrate_stores, plan_migration
from .transfer import (
    DEFAULT_PAGE_SIZE,
    FIELDS,
    TOMBSTONE_FIELDS,
    BadLine,
    LineProgress,
    NoProgress,
    Progress,
    TransferError,
    export_records,
    import_records,
    open_store,
    parse_kinds,
    quick_count,
    target_settings,
)

if TYPE_CHECKING:
    from worker.deadletters import DeadLetters

_PAGE_SIZE = click.option(
    "--page-size",
    type=click.IntRange(1, 10_000),
    default=DEFAULT_PAGE_SIZE,
    show_default=True,
    help="Records per read and per write.",
)


def _secrets_of(settings: Settings) -> list[str]:
    from urllib.parse import urlsplit

    import psycopg2.extensions

    found = []
    if settings.cosmos_key is not None:
        found.append(settings.cosmos_key.get_secret_value())
    if settings.postgres_connection_string is not None:
        with contextlib.suppress(Exception):
            dsn = settings.postgres_connection_string.get_secret_value()
            found.append(psycopg2.extensions.parse_dsn(dsn).get("password") or "")
    with contextlib.suppress(ValueError):
        found.append(urlsplit(settings.celery_broker_url.get_secret_value()).password or "")
    return [s for s in found if len(s) >= 4]


def _settings(ctx: click.Context, loaded: Settings | None = None) -> Settings:
    # Every secret configured is noted, so that no message printed afterwards can hold it.
    settings = loaded or load_settings()
    ctx.find_root().ensure_object(dict).setdefault("secrets", []).extend(_secrets_of(settings))
    return settings


def _fail(ctx: click.Context, message: str, code: int = 1) -> NoReturn:
    # Drivers sometimes echo what they were given; scrub every secret we know of, to be sure.
    for secret in (ctx.find_root().obj or {}).get("secrets", []):
        message = message.replace(secret, "***")
    click.echo(f"agentstore: {message}", err=True)
    ctx.exit(code)


class _Group(click.Group):
    """Turns our errors into one line on stderr and exit status 1, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (StorageError, TransferError) as exc:
            _fail(ctx, str(exc))
        except redis.RedisError as exc:
            _fail(ctx, f"broker: {type(exc).__name__}: {exc}")
        except BrokenPipeError:
            # `agentstore export | head`: the reader has all it wanted; say nothing more.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(1)
        except OSError as exc:  # an unwritable --output, a vanished import file, a full disk
            _fail(ctx, f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """agentstore: move, check and operate agent data stores.

    The store comes from POSTGRES_CONNECTION_STRING, else COSMOS_ENDPOINT and COSMOS_KEY
    (environment or .env); the broker from CELERY_BROKER_URL.
    """


def _progress() -> Progress:
    return LineProgress(sys.stderr, tty=True) if sys.stderr.isatty() else NoProgress()


def _kinds(ctx: click.Context, param: click.Parameter, value: str) -> tuple[StreamKind, ...]:
    try:
        return parse_kinds(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[Any]:
    if path is None:
        yield sys.stdout.buffer
        return
    # Written aside and renamed when complete: a failed export never looks like a whole one.
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as out:
        try:
            yield out
        except BaseException:
            out.close()
            partial.unlink(missing_ok=True)
            raise
    os.replace(partial, path)


def _fields(names: tuple[str, ...]) -> str:
    return "{" + ", ".join(names) + "}"


# The help names the fields from the tuples the lines are written from, so it stays true.
@cli.command(
    help="Write every partition tombstone and record as JSON Lines, streamed page by page: "
    f'tombstones as {_fields(TOMBSTONE_FIELDS)} (kind "tombstone"), then records as '
    f'{_fields(FIELDS)} ("deleted": a deleted row kept with its version, so a copy keeps '
    "the delete in force). Progress goes to stderr on a terminal."
)
@click.option(
    "--kinds",
    default=",".join(STREAM_KINDS),
    show_default=True,
    callback=_kinds,
    help="Comma-separated kinds to export.",
)
@_PAGE_SIZE
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to FILE (complete or not at all) instead of stdout.",
)
@click.pass_context
def export(
    ctx: click.Context, kinds: tuple[StreamKind, ...], page_size: int, output: Path | None
) -> None:
    settings = _settings(ctx)
    progress = _progress()
    tty = isinstance(progress, LineProgress)
    with open_store(settings, "store") as store, _output(output) as out:
        counts = export_records(
            store,
            out,
            kinds,
            page_size,
            progress,
            totals=lambda kind: quick_count(settings, kind) if tty else None,
        )
    per_kind = ", ".join(f"{kind} {n:,}" for kind, n in counts.items())
    where = f" to {output}" if output else ""
    click.echo(f"exported {sum(counts.values()):,} records ({per_kind}){where}", err=True)


@cli.command("import")
@click.argument("file", type=click.File("rb"))
@_PAGE_SIZE
@click.option("--dry-run", is_flag=True, help="Validate every line; write nothing.")
@click.pass_context
def import_(ctx: click.Context, file: Any, page_size: int, dry_run: bool) -> None:
    """Write the records of a JSON Lines FILE (`-` for stdin) made by `export`.

    Idempotent: records keep their versions, so importing a file again changes nothing.
    Each page is validated before it is written. A bad line stops the import with exit
    status 1, naming the line; pages before it stay written, which is safe: fix the line
    and import the same file again. --dry-run checks the whole file first.
    """
    settings = _settings(ctx)
    progress = _progress()
    try:
        if dry_run:
            result = import_records(None, file, page_size, progress)
        else:
            with open_store(settings, "store") as store:
                result = import_records(store, file, page_size, progress)
    except BadLine as exc:
        kept = (
            f"{exc.written:,} records from earlier lines were written; fix the line and import "
            "the same file again (it is idempotent)"
            if exc.written
            else "nothing was written"
        )
        name = getattr(file, "name", "-")
        _fail(ctx, f"{'stdin' if name in ('-', '<stdin>') else name}: {exc}; {kept}")
    per_kind = ", ".join(f"{kind} {n:,}" for kind, n in result.per_kind.items())
    verb = "checked" if dry_run else "imported"
    click.echo(f"{verb} {result.records:,} records ({per_kind})", err=True)


@cli.command()
@click.option(
    "--to-env",
    "to_env",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Env file configuring the target store, and only it.",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Progress file [default: .agentstore/migrate-<hash of source+target>.json].",
)
@click.option("--restart", is_flag=True, help="Ignore the checkpoint and copy from the start.")
@_PAGE_SIZE
@click.pass_context
def migrate(
    ctx: click.Context, to_env: Path, checkpoint: Path | None, restart: bool, page_size: int
) -> None:
    """Copy every tombstone and record from the configured store to the one TO_ENV configures.

    Resumable: progress is checkpointed after every page committed on the target, and the
    same command resumes after an interruption. Ends with a count check per kind, tombstones
    included (exit status 1 on a mismatch). Idempotent: copying twice changes nothing.
    Progress: a bar on a terminal, else a plain line every 30 s and one per kind.
    """
    source_settings = _settings(ctx)
    target = _settings(ctx, target_settings(to_env))
    plan = plan_migration(source_settings, target, checkpoint, restart)
    click.echo(f"source: {plan.source}\ntarget: {plan.target}", err=True)
    with open_store(source_settings, "source") as src, open_store(target, "target") as tgt:
        try:
            checks = migrate_stores(
                src,
                tgt,
                plan,
                page_size=page_size,
                progress=LineProgress(sys.stderr),
                totals=lambda kind: quick_count(source_settings, kind),
                note=lambda text: click.echo(text, err=True),
            )
        except KeyboardInterrupt:
            _fail(ctx, f"interrupted; run the same command again to resume ({plan.path})", 130)
    for check in checks:
        click.echo(str(check))
    bad = [check.kind for check in checks if not check.ok]
    if bad:
        _fail(
            ctx,
            f"count check failed for {', '.join(bad)}: the target is missing records (or holds "
            f"unexpected ones); was the source written to meanwhile? Run again to copy anew",
        )
    click.echo("migration complete", err=True)


@cli.command()
@click.option(
    "--no-workers", is_flag=True, help="Skip the worker check (for a worker's own healthcheck)."
)
@click.option(
    "--timeout",
    type=click.FloatRange(1, 120),
    default=8.0,
    show_default=True,
    help="Seconds for all checks together (fits a 10 s container healthcheck timeout).",
)
@click.pass_context
def health(ctx: click.Context, no_workers: bool, timeout: float) -> None:
    """Check the broker (PING), the store (one read) and the workers (Celery ping).

    One line per check; exit status 0 when all pass, 1 otherwise. A worker container checks
    itself with `agentstore health --no-workers`: its own health is whether the broker and
    the store answer it, not whether other workers do (and a `--pool solo` worker busy with
    a batch does not answer pings).
    """
    settings = _settings(ctx)
    checks = operate.run_health(settings, workers=not no_workers, timeout=timeout)
    for check in checks:
        click.echo(str(check))
    if not all(check.ok for check in checks):
        ctx.exit(1)


@cli.command()
@click.option("--no-workers", is_flag=True, help="Skip pinging the workers.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of lines.")
@click.pass_context
def stats(ctx: click.Context, no_workers: bool, as_json: bool) -> None:
    """Queue depth, pending and in-flight messages, dead letters, workers."""
    url = _settings(ctx).celery_broker_url.get_secret_value()
    try:
        numbers = operate.collect_stats(url, workers=not no_workers)
    except operate.WorkerPingError as exc:
        _fail(ctx, str(exc))
    if as_json:
        click.echo(json.dumps(numbers))
        return
    for line in operate.stats_lines(numbers):
        click.echo(line)


@cli.group()
def dlq() -> None:
    """Dead letters: ops (and messages) the worker could not apply."""


def _dead_letters(ctx: click.Context) -> DeadLetters:
    from worker.deadletters import DeadLetters

    dead = DeadLetters(_settings(ctx).celery_broker_url.get_secret_value())
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
        _fail(ctx, f"no dead letter {dead_letter_id!r}")
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
        _fail(ctx, f"no dead letter(s) {', '.join(missing)}")


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
        _fail(ctx, f"no dead letter(s) {', '.join(missing)}")


cli.add_command(erase)
cli.add_command(prune)
