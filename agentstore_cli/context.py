"""What every command shares: settings read once with their secrets noted, and errors
turned into one line on stderr with every known secret scrubbed."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, NoReturn

import click
import redis

from storage import backends
from storage.config import Settings, load_settings
from storage.errors import StorageError

from .transfer import TransferError


def secrets_of(settings: Settings) -> list[str]:
    from urllib.parse import urlsplit

    found = backends.secrets(settings)
    with contextlib.suppress(ValueError):
        found.append(urlsplit(settings.celery_broker_url.get_secret_value()).password or "")
    return [s for s in found if len(s) >= 4]


def read_settings(ctx: click.Context, loaded: Settings | None = None) -> Settings:
    # Every secret configured is noted, so that no message printed afterwards can hold it.
    loaded = loaded or load_settings()
    ctx.find_root().ensure_object(dict).setdefault("secrets", []).extend(secrets_of(loaded))
    return loaded


def fail(ctx: click.Context, message: str, code: int = 1) -> NoReturn:
    # Drivers sometimes echo what they were given; scrub every secret we know of, to be sure.
    for secret in (ctx.find_root().obj or {}).get("secrets", []):
        message = message.replace(secret, "***")
    click.echo(f"agentstore: {message}", err=True)
    ctx.exit(code)


class Group(click.Group):
    """Turns our errors into one line on stderr and exit status 1, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (StorageError, TransferError) as exc:
            fail(ctx, str(exc))
        except redis.RedisError as exc:
            fail(ctx, f"broker: {type(exc).__name__}: {exc}")
        except BrokenPipeError:
            # `agentstore export | head`: the reader has all it wanted; say nothing more.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(1)
        except OSError as exc:  # an unwritable --output, a vanished import file, a full disk
            fail(ctx, f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
