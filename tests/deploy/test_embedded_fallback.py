"""The test-suite plugin that stands in embedded servers for missing local ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from agentstore_cli.launch import free_port
from storage.config import mask_url
from tests.embedded_fallback import fallback_services
from tests.services import PG_ADMIN_URL, REDIS_URL

from .files import ROOT


def test_uses_local_servers_when_they_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTSTORE_TEST_PG", PG_ADMIN_URL)
    monkeypatch.setenv("AGENTSTORE_TEST_REDIS", REDIS_URL)
    with fallback_services(tmp_path) as services:
        assert (services.postgres.url, services.redis.url) == (PG_ADMIN_URL, REDIS_URL)
    assert not list(tmp_path.iterdir()), "nothing may be started"


def test_starts_embedded_servers_when_nothing_answers(
    embedded_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTSTORE_TEST_PG", raising=False)
    monkeypatch.delenv("AGENTSTORE_TEST_REDIS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    dead_pg = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    with fallback_services(embedded_dir, dead_pg, dead_redis) as services:
        assert (services.postgres.origin, services.redis.origin) == ("embedded", "embedded")
        assert services.postgres.url.split("?")[0].endswith("/postgres"), "the admin database"
        assert redis.Redis.from_url(services.redis.url).ping()


def test_plugin_reports_the_services_in_the_header(tmp_path: Path) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "import os\n"
        "from tests import services\n"
        "def test_sees_the_urls():\n"
        "    assert services.PG_ADMIN_URL == os.environ['AGENTSTORE_TEST_PG']\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.embedded_fallback", str(probe)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        # The servers this session uses, local or embedded: the plugin must find them answering.
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "PYTHONPATH": str(ROOT),
            "AGENTSTORE_TEST_PG": PG_ADMIN_URL,
            "AGENTSTORE_TEST_REDIS": REDIS_URL,
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for line in (
        f"test services: PostgreSQL: configured server at {mask_url(PG_ADMIN_URL)}",
        f"test services: Redis: configured server at {mask_url(REDIS_URL)}",
    ):
        assert line in result.stdout, result.stdout
