"""No command prints a configured secret: PostgreSQL password, Cosmos DB key, broker password.

`Cli` already searches every output of every test; this runs each command, failures
included, with all three secrets configured at once, and searches the files it leaves too.
"""

from __future__ import annotations

from pathlib import Path

from storage.pg_url import as_keywords, options, with_credentials, with_options
from tests.cli.conftest import PG_PASSWORD, Cli, Cosmos, assert_no_secret, open_store, seed
from tests.cli.test_operate import closed_broker


def test_no_output_or_file_contains_a_secret(
    run: Cli, pg_url: str, cosmos: Cosmos, tmp_path: Path
) -> None:
    libpq = as_keywords(with_credentials(pg_url, "postgres", PG_PASSWORD))
    server = options(libpq)
    cosmos_config = cosmos.config()
    broker = closed_broker()
    with open_store(cosmos_config) as store:
        seed(store, messages=5)
    everything = {**cosmos_config, "CELERY_BROKER_URL": broker}
    outputs: list[str] = []

    def record(args: list[str], config: dict[str, str], code: int, **kw: object) -> None:
        result = run(args, config, **kw)  # type: ignore[arg-type]
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        outputs.append(result.stdout + result.stderr)

    target = tmp_path / "target.env"
    target.write_text(f"POSTGRES_CONNECTION_STRING={libpq}\n")
    record(["export", "-o", str(tmp_path / "dump.jsonl")], everything, 0)
    record(["migrate", "--to-env", str(target)], everything, 0)
    # Loopback by address, by name or through a socket directory is shown as localhost.
    shown = f"host=localhost port={server.get('port', '5432')} dbname={server['dbname']}"
    assert f"target: PostgreSQL {shown}" in outputs[-1]
    record(["health", "--no-workers"], everything, 1)
    record(["health"], {**everything, "POSTGRES_CONNECTION_STRING": libpq}, 1)
    record(["stats"], everything, 1)
    record(["dlq", "list"], everything, 1)
    pg_everything = {"POSTGRES_CONNECTION_STRING": pg_url, "CELERY_BROKER_URL": broker}
    record(["import", "-"], pg_everything, 1, input='{"kind": "state"}\n')
    record(["import", str(tmp_path / "dump.jsonl")], pg_everything, 0)
    # Same store: refused, the message names it.
    same = tmp_path / "same.env"
    same.write_text(f"POSTGRES_CONNECTION_STRING={pg_url}\n")
    record(["migrate", "--to-env", str(same)], pg_everything, 1)
    # Bad credentials and unreachable servers.
    wrong = {**cosmos_config, "COSMOS_KEY": "bm90LXRoZS1rZXk=" + cosmos_config["COSMOS_KEY"][16:]}
    record(["export"], wrong, 1)
    bad_port = with_options(pg_url, port="1")
    record(["export"], {"POSTGRES_CONNECTION_STRING": bad_port}, 1)
    record(["export"], {"POSTGRES_CONNECTION_STRING": with_options(libpq, port="1")}, 1)
    assert all("Traceback" not in text for text in outputs)
    assert_no_secret(*outputs)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".env"]
    assert_no_secret(*(p.read_text(errors="replace") for p in leftovers))
