"""Connection-string helpers on the three forms the suite meets: a TCP URL, the embedded
server's socket URL (`?host=/dir`) and libpq keywords."""

from __future__ import annotations

import pytest

from storage import pg_url

TCP = "postgresql://postgres:pw@127.0.0.1:5432/agents"
SOCKET = "postgresql://postgres:@/agents?host=/tmp/run/postgres"
KEYWORDS = "host=/tmp/run/postgres dbname=agents user=postgres"


@pytest.mark.parametrize("dsn", [TCP, SOCKET, KEYWORDS])
def test_database_is_the_named_one_whatever_the_form(dsn: str) -> None:
    assert pg_url.database(dsn) == "agents"
    renamed = pg_url.with_database(dsn, "agents_later")
    assert pg_url.database(renamed) == "agents_later"
    # Only the database changed: the server is the same one.
    assert pg_url.server(renamed)[:2] == pg_url.server(dsn)[:2]


def test_an_unnamed_database_is_the_users() -> None:
    assert pg_url.database("postgresql://alice@db.example/") == "alice"


@pytest.mark.parametrize("dsn", [TCP, SOCKET, KEYWORDS])
def test_host_and_port_options_replace_a_socket_or_a_tcp_address(dsn: str) -> None:
    moved = pg_url.options(pg_url.with_options(dsn, host="127.0.0.1", port="6543"))
    assert (moved["host"], moved["port"], moved["dbname"]) == ("127.0.0.1", "6543", "agents")
