"""PostgreSQL connection strings changed without losing what they already say.

A connection string is a URL (`postgresql://u@h:5432/db?sslmode=require`, or the embedded
server's `postgresql://postgres:@/postgres?host=/socket/dir`) or libpq keywords
(`host=h dbname=db`). Appending `?x=y` or reading `hostname` breaks the socket form; these
helpers keep every existing option and the form they were given.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from psycopg2.extensions import make_dsn, parse_dsn

_URL_SCHEMES = ("postgresql", "postgres")


def is_url(dsn: str) -> bool:
    return urlsplit(dsn).scheme in _URL_SCHEMES


def options(dsn: str) -> dict[str, str]:
    """Every libpq option the string sets (`host`, `port`, `dbname`, `user`, `sslmode`...)."""
    parsed: dict[str, str] = parse_dsn(dsn)
    return parsed


def database(dsn: str) -> str:
    """The database `dsn` connects to (libpq's default when unnamed: the user's name)."""
    found = options(dsn)
    return found.get("dbname") or found.get("user") or ""


def server(dsn: str) -> tuple[str, str, str]:
    """`(host, port, database)` that `dsn` reaches; loopback by name, by address or through
    a socket directory is one server, `localhost`. Raises psycopg2's `ProgrammingError`."""
    found = options(dsn)
    host = (found.get("host") or found.get("hostaddr") or "").split(",")[0].lower()
    if host in ("", "localhost", "127.0.0.1", "::1") or host.startswith("/"):
        host = "localhost"
    port = (found.get("port") or "5432").split(",")[0]
    return host, port, database(dsn)


def with_options(dsn: str, **changes: str) -> str:
    """`dsn` with libpq options set or replaced; a URL stays a URL, keywords stay keywords."""
    if not is_url(dsn):
        return str(make_dsn(dsn, **changes))
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def with_database(dsn: str, database: str) -> str:
    """The same server, options and credentials; another database."""
    if not is_url(dsn):
        return with_options(dsn, dbname=database)
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


def with_credentials(dsn: str, user: str, password: str | None = None) -> str:
    """The same server and options, logged in as `user` (with `password` when given)."""
    if not is_url(dsn):
        credentials = {"user": user} | ({"password": password} if password is not None else {})
        return with_options(dsn, **credentials)
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    login = quote(user, safe="")
    if password is not None:
        login += ":" + quote(password, safe="")
    return urlunsplit(parts._replace(netloc=f"{login}@{host}"))


def as_keywords(dsn: str) -> str:
    """The libpq keyword form (`host=... dbname=...`) of any connection string."""
    return str(make_dsn(**options(dsn)))
