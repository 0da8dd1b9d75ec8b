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
from typing import Any

import click

from broker.sentinel import SentinelOptions
from storage import backends
from storage.records import STREAM_KINDS, StreamKind

from . import operate
from .context import Group, fail, read_settings
from .dlq import dlq
from .lifecycle import erase, prune
from .migrate import migrate_stores, plan_migration
from .progress import LineProgress, NoProgress, Progress
from .stores import open_store, target_settings
from .transfer import (
    DEFAULT_PAGE_SIZE,
    FIELDS,
    TOMBSTONE_FIELDS,
    BadLine,
    export_records,
    import_records,
    parse_kinds,
)

_PAGE_SIZE = click.option(
    "--page-size",
    type=click.IntRange(1, 10_000),
    default=DEFAULT_PAGE_SIZE,
    show_default=True,
    help="Records per read and per write.",
)


# The help names what configures each backend from the registry, so it stays true.
@click.group(
    cls=Group,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="agentstore: move, check and operate agent data stores.\n\n"
    f"The store: {backends.how_to_configure()} (environment or .env). The broker: "
    "CELERY_BROKER_URL.",
)
def cli() -> None:
    pass


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
    settings = read_settings(ctx)
    progress = _progress()
    tty = isinstance(progress, LineProgress)
    with open_store(settings, "store") as store, _output(output) as out:
        counts = export_records(
            store,
            out,
            kinds,
            page_size,
            progress,
            totals=store.count if tty else lambda kind: None,
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
    settings = read_settings(ctx)
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
        fail(ctx, f"{'stdin' if name in ('-', '<stdin>') else name}: {exc}; {kept}")
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
    source_settings = read_settings(ctx)
    target = read_settings(ctx, target_settings(to_env))
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
                totals=src.count,
                note=lambda text: click.echo(text, err=True),
            )
        except KeyboardInterrupt:
            fail(ctx, f"interrupted; run the same command again to resume ({plan.path})", 130)
    for check in checks:
        click.echo(str(check))
    bad = [check.kind for check in checks if not check.ok]
    if bad:
        fail(
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
    """Check the broker (PING), the store (one read) and the workers (Celery ping); behind
    Redis Sentinel, also that a primary is known with the replicas saves wait for online.

    One line per check; exit status 0 when all pass, 1 otherwise. A worker container checks
    itself with `agentstore health --no-workers`: its own health is whether the broker and
    the store answer it, not whether other workers do (and a `--pool solo` worker busy with
    a batch does not answer pings).
    """
    settings = read_settings(ctx)
    checks = operate.run_health(settings, workers=not no_workers, timeout=timeout)
    for check in checks:
        click.echo(str(check))
    if not all(check.ok for check in checks):
        ctx.exit(1)


@cli.command()
@click.option("--no-workers", is_flag=True, help="Skip pinging the workers.")
@click.option("--json", "as_json", is_flag=True, help="Short for --format json.")
@click.option(
    "--format",
    "form",
    type=click.Choice(["text", "json", "prometheus"]),
    default="text",
    help="prometheus: the broker's gauges once, in Prometheus' text format (for a cron job "
    "or a sidecar); no worker ping, no rate sampling.",
)
@click.pass_context
def stats(ctx: click.Context, no_workers: bool, as_json: bool, form: str) -> None:
    """Queue depth, pending and in-flight messages, dead letters, workers; behind Redis
    Sentinel, also the primary and each replica's lag."""
    settings = read_settings(ctx)
    url = settings.celery_broker_url.get_secret_value()
    sentinel = SentinelOptions.from_settings(settings)
    if form == "prometheus":
        click.echo(operate.prometheus_stats(url, sentinel), nl=False)
        return
    try:
        numbers = operate.collect_stats(url, workers=not no_workers, sentinel=sentinel)
    except operate.WorkerPingError as exc:
        fail(ctx, str(exc))
    if as_json or form == "json":
        click.echo(json.dumps(numbers))
        return
    for line in operate.stats_lines(numbers):
        click.echo(line)


cli.add_command(dlq)
cli.add_command(erase)
cli.add_command(prune)
