"""Worker settings come from the environment and fail clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.errors import ConfigError
from worker.settings import WorkerSettings, load_worker_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AGENTSTORE_BATCH_MAX", "AGENTSTORE_BATCH_WAIT_MS", "AGENTSTORE_RECOVERY_AFTER_S"):
        monkeypatch.delenv(var, raising=False)
    settings = load_worker_settings()
    assert settings == WorkerSettings()
    assert (settings.batch_max, settings.batch_wait_ms) == (4000, 50.0)


def test_overrides_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSTORE_BATCH_MAX", "50")
    monkeypatch.setenv("AGENTSTORE_RECOVERY_AFTER_S", "3")
    settings = load_worker_settings()
    assert settings.batch_max == 50 and settings.recovery_after_s == 3.0
    monkeypatch.setenv("AGENTSTORE_BATCH_MAX", "lots")
    with pytest.raises(ConfigError, match="AGENTSTORE_BATCH_MAX"):
        load_worker_settings()
    monkeypatch.setenv("AGENTSTORE_BATCH_MAX", "0")
    with pytest.raises(ConfigError, match=r"AGENTSTORE_BATCH_MAX: .*greater than or equal to 1"):
        load_worker_settings()


def test_settings_come_from_dotenv_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTSTORE_RETRY_TRIES", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("AGENTSTORE_RETRY_TRIES=9\nAGENTSTORE_REAPER_BATCH=x\n")
    with pytest.raises(ConfigError, match="AGENTSTORE_REAPER_BATCH"):
        load_worker_settings()
    (tmp_path / ".env").write_text("AGENTSTORE_RETRY_TRIES=9\n")
    assert load_worker_settings().retry_tries == 9


def test_a_worker_refuses_the_memory_store(tmp_path: Path) -> None:
    # It would confirm every save into a store no one else can read, and lose it at exit.
    env = {**os.environ, "AGENTSTORE_BACKEND": "memory"}
    proc = subprocess.run(
        [sys.executable, "-c", "import worker.app"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "AGENTSTORE_BACKEND=memory is for tests in one process" in proc.stderr
