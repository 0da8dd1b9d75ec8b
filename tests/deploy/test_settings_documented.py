"""Every variable in docker-compose.yml and .env.example is a real setting, and vice versa."""

from __future__ import annotations

import re
from typing import Any

import pydantic
import pytest

from storage.config import Settings
from worker.settings import WorkerSettings

from .files import ROOT, env_example, load_compose, our_services, referenced_variables

# Read by docker compose itself (the postgres image), never by agentstore.
COMPOSE_ONLY = {"POSTGRES_PASSWORD"}
SETTINGS = {name.upper() for name in Settings.model_fields}
WORKER = {f"AGENTSTORE_{name.upper()}" for name in WorkerSettings.model_fields}
PACKAGES = ("storage", "producer", "worker", "agentstore_cli")


def _names_in_code(*packages: str) -> set[str]:
    """`AGENTSTORE_*` variables the code mentions (and so, presumably, reads)."""
    sources = (p.read_text() for pkg in packages for p in (ROOT / pkg).rglob("*.py"))
    return {name for text in sources for name in re.findall(r"\bAGENTSTORE_[A-Z0-9_]+\b", text)}


IN_CODE = _names_in_code(*PACKAGES)
KNOWN = SETTINGS | WORKER | IN_CODE | COMPOSE_ONLY


def _defaults() -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for name, info in Settings.model_fields.items():
        value = info.default
        defaults[name.upper()] = getattr(value, "get_secret_value", lambda v=value: v)()
    for name, info in WorkerSettings.model_fields.items():
        defaults[f"AGENTSTORE_{name.upper()}"] = info.default
    return defaults


def test_worker_field_names_are_its_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # .env.example documents AGENTSTORE_<FIELD> per field; the worker must read those.
    # A value other than the default per field: twice a number, else a sample.
    samples: dict[str, Any] = {"metrics_port": 9808, "log_format": "json"}
    for name, info in WorkerSettings.model_fields.items():
        if name not in samples:
            samples[name] = info.default * 2
        monkeypatch.setenv(f"AGENTSTORE_{name.upper()}", str(samples[name]))
    loaded = WorkerSettings()
    for name in WorkerSettings.model_fields:
        assert getattr(loaded, name) == samples[name], name


def test_env_example_documents_every_setting_and_nothing_else() -> None:
    documented = set(env_example())
    assert not KNOWN - documented, f"undocumented in .env.example: {sorted(KNOWN - documented)}"
    assert not documented - KNOWN, f"not settings: {sorted(documented - KNOWN)}"


def test_env_example_states_each_meaning_and_the_real_default() -> None:
    defaults = _defaults()
    for var in env_example().values():
        assert len(var.comment) > 20, f"{var.name}: say what it means"
        stated = re.search(r"Default: (?:`([^`]*)`|(none))", var.comment)
        assert stated, f"{var.name}: the comment must say `Default: ...`"
        if var.name not in defaults:
            continue  # read outside Settings/WorkerSettings: its default is not introspectable
        real = defaults.get(var.name)
        if stated.group(2) == "none":
            assert real is None, f"{var.name} defaults to {real!r}, not none"
            continue
        text = stated.group(1)
        assert real is not None, f"{var.name} has no default, but .env.example says {text!r}"
        assert _parse(real, text) == real, f"{var.name}: documented {text!r}, real {real!r}"
        if var.commented and var.value:
            assert _parse(real, var.value) == real, f"{var.name}: example line shows {var.value!r}"


def _parse(like: Any, text: str) -> Any:
    """`text` as a value of `like`'s type, read as the settings read it (bool("false") is True)."""
    return pydantic.TypeAdapter(type(like)).validate_python(text)


def test_compose_refers_only_to_real_settings() -> None:
    compose = load_compose()
    referenced: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, str):
            referenced.update(referenced_variables(node))

    walk(compose)
    assert not referenced - KNOWN, f"compose interpolates unknown {sorted(referenced - KNOWN)}"
    assert referenced >= COMPOSE_ONLY, "a compose-only variable nobody uses: drop it"
    for name, service in our_services(compose).items():
        keys = set(service.get("environment") or {})
        unknown = keys - (KNOWN - COMPOSE_ONLY)
        assert not unknown, f"{name} sets unknown {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_each_setting_is_read_from_its_variable(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Guards the premise of the cross-check: the variable name really reaches the field.
    values = {
        "POSTGRES_CONNECTION_STRING": "postgresql://u@h:5432/d",
        "COSMOS_ENDPOINT": "https://h:443/",
        "CELERY_BROKER_URL": "redis://h:6379/3",
        "AGENTSTORE_BACKEND": "memory",
    }
    field = name.lower()
    annotation = str(Settings.model_fields[field].annotation)
    numeric = "int" in annotation or "float" in annotation
    boolean = "bool" in annotation
    value = values.get(name, "7" if numeric else "true" if boolean else "text")
    monkeypatch.setenv(name, value)
    got = getattr(Settings(_env_file=None), field)
    got = getattr(got, "get_secret_value", lambda: got)()
    assert str(got).lower() in (value, f"{value}.0")
