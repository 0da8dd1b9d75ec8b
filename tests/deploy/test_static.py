"""The compose file, Dockerfile and .dockerignore, checked without Docker."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest

from .files import (
    COMPOSE,
    DOCKERFILE,
    ROOT,
    VENV_BIN,
    Instruction,
    dockerfile_instructions,
    dockerignore_patterns,
    env_example,
    ignored,
    load_compose,
    our_services,
)

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY$|CONNECTION_STRING|BROKER_URL", re.I)
INLINE_PASSWORD = re.compile(r"://[^/\s:@]*:(?P<password>[^@\s]+)@")
LONG_BLOB = re.compile(r"[A-Za-z0-9+/]{32,}={0,2}")


def _tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make venv` (the dev extra installs it)")
    return str(path)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return dockerfile_instructions()


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif node is not None:
        yield str(node)


# --- validators ---------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema() -> None:
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_passes_with_the_repository_config() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_config_fails_on_warnings_and_justifies_every_ignored_rule() -> None:
    lines = (ROOT / ".hadolint.yaml").read_text().splitlines()
    assert "failure-threshold: warning" in lines
    for i, line in enumerate(lines):
        if re.match(r"\s*-\s*(DL|SC)\d+", line):
            justified = "#" in line or lines[i - 1].strip().startswith("#")
            assert justified, f".hadolint.yaml ignores {line.strip()} without saying why"


# --- Dockerfile ---------------------------------------------------------------------------


def test_base_image_is_slim_python_3_11(instructions: list[Instruction]) -> None:
    froms = [i.arguments for i in instructions if i.keyword == "FROM"]
    assert froms and all(re.match(r"python:3\.11-slim", f) for f in froms), froms


def test_runs_as_a_non_root_user(instructions: list[Instruction]) -> None:
    users = [i.arguments for i in instructions if i.keyword == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    last_user = max(i.line for i in instructions if i.keyword == "USER")
    late_runs = [i for i in instructions if i.keyword == "RUN" and i.line > last_user]
    assert not late_runs, "RUN after USER: installs must happen as root, before dropping it"


def test_the_fixed_high_uid_is_not_created_as_a_system_account(
    instructions: list[Instruction],
) -> None:
    # useradd/groupadd warn when --system meets an id above SYS_UID_MAX/SYS_GID_MAX (999).
    runs = [i.arguments for i in instructions if i.keyword == "RUN"]
    for command in ("useradd", "groupadd"):
        for run in runs:
            for call in re.findall(rf"\b{command}\b[^;&]*", run):
                ids = [int(n) for n in re.findall(r"--(?:uid|gid)\s+(\d+)", call)]
                if any(n > 999 for n in ids):
                    assert "--system" not in call, call


def test_the_project_install_leaves_no_build_tree_in_its_layer(
    instructions: list[Instruction],
) -> None:
    install = [
        i.arguments
        for i in instructions
        if i.keyword == "RUN" and re.search(r"pip install[^&]*\s\.(\s|$)", i.arguments)
    ]
    assert len(install) == 1, install
    assert re.search(r"rm -rf[^&]*\bbuild\b", install[0]), install[0]
    assert re.search(r"rm -rf[^&]*egg-info", install[0]), install[0]


def test_dependencies_are_installed_before_the_code_is_copied(
    instructions: list[Instruction],
) -> None:
    copies = [i for i in instructions if i.keyword == "COPY"]
    first_copy = copies[0]
    assert first_copy.arguments.split()[0] == "pyproject.toml", "copy pyproject.toml first"
    install = next(i for i in instructions if i.keyword == "RUN" and "pip install" in i.arguments)
    assert first_copy.line < install.line < copies[1].line, "deps layer must precede the code"


def test_dependency_layer_installs_exactly_the_pyproject_dependencies(
    instructions: list[Instruction],
) -> None:
    # Runs the Dockerfile's own extraction command natively, against the real pyproject.toml.
    install = next(i for i in instructions if i.keyword == "RUN" and "tomllib" in i.arguments)
    command = shlex.split(install.arguments.split(">", 1)[0])
    assert command[0] == "python"
    result = subprocess.run(
        [sys.executable, *command[1:]], capture_output=True, text=True, cwd=ROOT, timeout=30
    )
    assert result.returncode == 0, result.stderr
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert result.stdout.split("\n")[:-1] == pyproject["project"]["dependencies"]


def test_healthcheck_runs_the_cli_without_requiring_workers(
    instructions: list[Instruction],
) -> None:
    checks = [i.arguments for i in instructions if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1, checks
    exec_form = checks[0].split("CMD", 1)[1].strip()
    assert json.loads(exec_form) == ["agentstore", "health", "--no-workers"]


def test_default_command_is_the_celery_worker(instructions: list[Instruction]) -> None:
    cmd = [i.arguments for i in instructions if i.keyword == "CMD"]
    assert [json.loads(c) for c in cmd] == [
        ["celery", "-A", "worker", "worker", "--loglevel", "INFO"]
    ]


def test_copied_paths_exist_and_are_in_the_build_context(
    instructions: list[Instruction],
) -> None:
    patterns = dockerignore_patterns()
    for copy in (i for i in instructions if i.keyword == "COPY"):
        sources = [a for a in copy.arguments.split()[:-1] if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path (line {copy.line})"
            assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


def test_every_package_of_the_project_is_copied(instructions: list[Instruction]) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include if (ROOT / p.rstrip("*")).is_dir()}
    copied = {
        a.rstrip("/") for i in instructions if i.keyword == "COPY" for a in i.arguments.split()[:-1]
    }
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_context() -> None:
    patterns = dockerignore_patterns()
    for path in [".env", ".env.local", ".git/config", ".venv/bin/python", "tests/x.py"]:
        assert ignored(path, patterns), f"{path} would be sent to the Docker daemon"
    for path in ["storage/__pycache__/ops.cpython-311.pyc", "agentstore.egg-info/PKG-INFO"]:
        assert ignored(path, patterns), path


def test_no_secret_is_baked_into_the_image(instructions: list[Instruction]) -> None:
    for i in instructions:
        if i.keyword in ("ENV", "ARG"):
            assert not SECRET_NAME.search(i.arguments), f"line {i.line}: {i.keyword} {i.arguments}"
        assert not INLINE_PASSWORD.search(i.arguments), f"line {i.line}: password in a URL"
        if i.keyword != "RUN":
            assert not LONG_BLOB.search(i.arguments), f"line {i.line}: key-like value"
    copied = [a for i in instructions if i.keyword == "COPY" for a in i.arguments.split()[:-1]]
    assert not [c for c in copied if c.startswith(".env") or c == "."], copied


# --- docker-compose.yml -------------------------------------------------------------------


def test_worker_services_can_scale(compose: dict[str, Any]) -> None:
    ours = our_services(compose)
    assert {"worker", "demo"} <= set(ours), sorted(ours)
    for name, service in ours.items():
        assert "container_name" not in service, f"{name}: container_name prevents --scale"
        assert "ports" not in service, f"{name}: host ports prevent --scale"
    worker = compose["services"]["worker"]
    assert "profiles" not in worker, "the worker must start with a plain `docker compose up`"


def test_workers_wait_for_healthy_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in our_services(compose).items():
        depends = service.get("depends_on")
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for dependency, spec in depends.items():
            if "healthcheck" in services[dependency]:
                assert spec.get("condition") == "service_healthy", f"{name} -> {dependency}"
    assert set(services["worker"]["depends_on"]) == {"redis", "postgres"}


def test_redis_keeps_queued_saves(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"] == "redis:7"
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_postgres_has_a_volume_and_a_pg_isready_healthcheck(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in postgres["healthcheck"]["test"]


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    used = {
        v.split(":")[0]
        for s in compose["services"].values()
        for v in s.get("volumes", [])
        if isinstance(v, str) and not v.startswith((".", "/"))
    }
    assert used and used <= set(compose.get("volumes") or {}), used


def test_demo_is_a_one_shot_in_its_profile(compose: dict[str, Any]) -> None:
    demo = compose["services"]["demo"]
    assert demo["profiles"] == ["demo"]
    assert demo["restart"] == "no"
    assert demo["command"][:3] == ["python", "-m", "agentstore_cli.demo"]


def test_cosmos_profile_runs_the_repository_test_server(compose: dict[str, Any]) -> None:
    cosmos = compose["services"]["cosmos"]
    assert cosmos["image"] == "node:20" and cosmos["profiles"] == ["cosmos"]
    script = " ".join(cosmos["command"])
    mount = next(v for v in cosmos["volumes"] if v.startswith("./cosmos-server:"))
    target = mount.split(":")[1]
    for name in re.findall(rf"{re.escape(target)}/(\S+)", script):
        assert (ROOT / "cosmos-server" / name).is_file(), f"{name} is not in cosmos-server/"
    assert "npm ci" in script
    port = re.search(r"node server\.js (\d+)", script)
    assert port, script
    assert port.group(1) in " ".join(cosmos["healthcheck"]["test"])
    worker = compose["services"]["worker-cosmos"]
    assert worker["network_mode"] == "service:cosmos"
    assert worker["environment"]["COSMOS_ENDPOINT"] == f"https://127.0.0.1:{port.group(1)}/"
    assert worker["depends_on"]["cosmos"]["condition"] == "service_healthy"
    assert (
        worker["environment"]["CELERY_BROKER_URL"]
        != compose["x-postgres-store"]["CELERY_BROKER_URL"]
    ), "the Cosmos worker must not consume the PostgreSQL workers' queue"


def test_no_secret_looking_value_in_compose(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items():
            value = "" if value is None else str(value)
            if SECRET_NAME.search(key) and value and not value.startswith("${"):
                assert not INLINE_PASSWORD.search(value) and not LONG_BLOB.search(value), (
                    f"{name}.{key} holds a literal secret"
                )
    for text in _strings(compose):
        for match in INLINE_PASSWORD.finditer(text):
            assert match.group("password").startswith("${"), f"password in {text!r}"
        assert not LONG_BLOB.search(text.replace("/", " ")), f"key-like value in {text!r}"


def test_env_example_sets_no_secret() -> None:
    for var in env_example().values():
        if SECRET_NAME.search(var.name) and not var.commented:
            assert var.value == "", f".env.example sets {var.name}; leave secrets empty"
        if not var.commented:
            assert not INLINE_PASSWORD.search(var.value), var.name


def test_every_compose_variable_has_a_default_or_an_error() -> None:
    # A bare ${VAR} makes compose print "variable is not set. Defaulting to a blank string"
    # before the intended ${VAR:?message}.
    text = (ROOT / "docker-compose.yml").read_text()
    bare = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)
    assert not bare, f"no default and no error message for: {bare}"
