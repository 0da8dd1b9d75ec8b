"""Sentinel broker URLs and settings: parsed once for everyone, checked at start, never shown
with a password; and the replies of a replicated publish, read the same way by both
publishers."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from broker import sentinel
from broker.errors import PublishError
from broker.publisher import (
    Attempts,
    PublishRound,
    publish_command,
)
from storage.config import check_broker_url, load_settings, mask_url
from storage.errors import ConfigError

URL = "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://10.0.0.2:26380/2;sentinel://10.0.0.3"


def test_a_sentinel_url_names_every_sentinel_the_database_and_the_servers_password() -> None:
    options = sentinel.SentinelOptions(master="queue", password="sentinel-pw", tls=True)
    target = sentinel.parse(URL, options)
    assert target.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    assert target.db == 2 and target.password == "s3cret"
    assert target.server_kwargs() == {"db": 2, "ssl": True, "password": "s3cret"}  # TLS on
    assert target.sentinel_kwargs({"socket_timeout": 1.0, "health_check_interval": 30}) == {
        "socket_timeout": 1.0,
        "password": "sentinel-pw",
        "ssl": True,
    }
    transport = sentinel.sentinel_transport_options(target)
    assert transport["master_name"] == "queue"
    assert transport["sentinel_kwargs"]["password"] == "sentinel-pw"
    assert sentinel.celery_ssl_options(target) == {"ssl_cert_reqs": "required"}
    assert "s3cret" not in repr(target) and "sentinel-pw" not in repr(options)


def test_tls_settings_come_from_the_urls_ssl_parameters_and_only_with_tls_on() -> None:
    url = "sentinel://h:1/0?ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false;sentinel://g:2/0"
    on = sentinel.parse(url, sentinel.SentinelOptions(tls=True))
    expected = {"ssl": True, "ssl_ca_certs": "/etc/ca.pem", "ssl_check_hostname": False}
    assert on.tls_kwargs() == expected
    assert on.server_kwargs() == {"db": 0, **expected}
    assert sentinel.celery_ssl_options(on) == {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_check_hostname": False,
    }
    off = sentinel.parse(url, sentinel.SentinelOptions(tls=False))
    assert off.tls_kwargs() == {} and off.server_kwargs() == {"db": 0, "ssl": False}
    assert sentinel.celery_ssl_options(off) is None


@pytest.mark.parametrize(
    "bad",
    [
        "sentinel://10.0.0.1:26379;redis://10.0.0.2:6379",  # mixed schemes
        "sentinel://10.0.0.1:26379/x",  # database not a number
        "sentinel://10.0.0.1:notaport",
        "sentinel://",
    ],
)
def test_malformed_sentinel_urls_are_refused_without_showing_the_password(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_broker_url("CELERY_BROKER_URL", bad.replace("10.0.0.1", ":pw-123@10.0.0.1", 1))
    assert "pw-123" not in str(caught.value)


def test_every_part_of_a_sentinel_url_is_masked() -> None:
    shown = mask_url("sentinel://:a@h1:1/0;sentinel://u:b@h2:2/0")
    assert shown == "sentinel://:***@h1:1/0;sentinel://u:***@h2:2/0"


def test_settings_read_the_sentinel_variables_and_hide_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", URL)
    monkeypatch.setenv("AGENTSTORE_SENTINEL_MASTER", "queue")
    monkeypatch.setenv("AGENTSTORE_SENTINEL_PASSWORD", "sentinel-pw")
    monkeypatch.setenv("AGENTSTORE_PUBLISH_REPLICAS", "2")
    settings = load_settings()
    assert sentinel.SentinelOptions.from_settings(settings) == sentinel.SentinelOptions(
        "queue", "sentinel-pw", False
    )
    assert settings.agentstore_publish_replicas == 2
    assert "sentinel-pw" not in repr(settings) and "s3cret" not in repr(settings)
    monkeypatch.setenv("AGENTSTORE_PUBLISH_REPLICAS", "-1")
    with pytest.raises(ConfigError, match="AGENTSTORE_PUBLISH_REPLICAS"):
        load_settings()


def _round(replicas: int, timeout: float = 5.0) -> PublishRound:
    command = publish_command([("id", b"message")])
    return PublishRound(command, replicas, Attempts("redis://h", timeout))


def _names(commands: list[bytes]) -> list[str]:
    """Each packed command's name (its first RESP bulk string)."""
    return [c.split(b"\r\n")[2].decode() for c in commands]


def _args(command: bytes) -> list[bytes]:
    return command.split(b"\r\n")[2:-1:2]


def test_the_script_and_wait_go_in_one_round_trip_and_wait_is_read_last() -> None:
    round_ = _round(1)
    commands = round_.commands()
    assert _names(commands) == ["EVALSHA", "WAIT"]
    wait = _args(commands[1])
    assert wait[1] == b"1" and 0 < int(wait[2]) <= 2000  # within one socket timeout
    assert round_.answered([1, 1]) == []  # acknowledged: published
    assert _names(_round(0).commands()) == ["EVALSHA"]
    assert _round(0).answered([1]) == []


def test_a_missing_script_is_loaded_in_the_same_round_trip_as_the_retry() -> None:
    round_ = _round(2)
    again = round_.answered([redis.exceptions.NoScriptError("NOSCRIPT"), 2])
    assert _names(again) == ["SCRIPT", "EVALSHA", "WAIT"]
    assert round_.answered([b"sha", 1, 2]) == []


def test_too_few_acknowledgements_wait_again_then_raise_once_the_time_is_up() -> None:
    round_ = _round(2, timeout=0.05)
    follow_up: list[Any] = round_.answered([1, 1])
    assert _names(follow_up) == ["WAIT"]  # the same connection waits some more
    deadline_passed = _round(2, timeout=1e-9)
    with pytest.raises(PublishError, match="only 1 of the 2 replica") as caught:
        deadline_passed.answered([1, 1])
    assert caught.value.may_be_published


def test_a_demoted_primary_is_a_connection_error_and_other_errors_are_raised() -> None:
    with pytest.raises(redis.ConnectionError, match="replica now"):
        _round(1).answered([redis.exceptions.ReadOnlyError("READONLY"), 0])
    with pytest.raises(redis.ResponseError, match="OOM"):
        _round(1).answered([redis.exceptions.OutOfMemoryError("OOM"), 0])
