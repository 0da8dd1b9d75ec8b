"""Reading the deployment files the way Docker and docker compose read them (no Docker here)."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
VENV_BIN = ROOT / ".venv" / "bin"


def load_compose() -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load(COMPOSE.read_text())
    return data


def our_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the image built from our Dockerfile."""
    return {
        name: service
        for name, service in compose["services"].items()
        if "build" in service and service["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
    }


# --- compose interpolation (https://docs.docker.com/compose/how-tos/environment-variables/) --

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(ValueError):
    """A `${VAR:?message}` or `${VAR?message}` whose variable is unset."""


def interpolate(text: str, variables: dict[str, str]) -> str:
    """`text` with `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`,
    `${VAR?err}` (defaults may nest) and `$$` resolved as docker compose does."""
    out: list[str] = []
    i = 0
    while i < len(text):
        match = _VAR.match(text, i) if text[i] == "$" else None
        if match is None:
            out.append(text[i])
            i += 1
            continue
        if match.group(0) == "$$":
            out.append("$")
            i = match.end()
        elif match.group("bare"):
            out.append(variables.get(match.group("bare"), ""))
            i = match.end()
        else:
            name = match.group("braced")
            end, operator, argument = _braced_rest(text, match.end())
            out.append(_substitute(name, operator, argument, variables))
            i = end
    return "".join(out)


def _braced_rest(text: str, start: int) -> tuple[int, str, str]:
    """From just after `${NAME`: (index after the closing brace, operator, raw argument)."""
    operator = ""
    for op in (":-", ":?", "-", "?"):
        if text.startswith(op, start):
            operator = op
            break
    depth = 1
    i = start + len(operator)
    arg_start = i
    while depth:
        if i >= len(text):
            raise ValueError(f"unclosed ${{ in {text!r}")
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
        i += 1
    return i, operator, text[arg_start : i - 1]


def _substitute(name: str, operator: str, argument: str, variables: dict[str, str]) -> str:
    value = variables.get(name)
    unset = value is None
    empty = unset or value == ""
    if operator in (":-", "-") and (empty if operator == ":-" else unset):
        return interpolate(argument, variables)
    if operator in (":?", "?") and (empty if operator == ":?" else unset):
        raise MissingVariable(f"{name}: {interpolate(argument, variables)}")
    return value or ""


def referenced_variables(text: str) -> set[str]:
    """Every variable name an interpolation in `text` refers to (nested ones included)."""
    text = text.replace("$$", "")
    return {m.group("braced") or m.group("bare") for m in _VAR.finditer(text)} - {None}


def service_environment(service: dict[str, Any], variables: dict[str, str]) -> dict[str, str]:
    """The service's `environment:` after interpolation with `variables` (the .env file)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value or ""), variables) for key, value in env.items()}


# --- Dockerfile ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comments inside a continued instruction are dropped by Docker too
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, arguments = pending.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = ""
    return instructions


# --- .dockerignore --------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative, `/`-separated) out of the build context.

    Enough of Docker's rules for our patterns: the last matching pattern wins, `!` re-includes,
    `**` matches any number of directories, and a pattern matching a directory covers its
    content.
    """
    excluded = False
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(_match(prefix, pattern) for prefix in prefixes):
            excluded = not negate
    return excluded


def _match(path: str, pattern: str) -> bool:
    if pattern.startswith("**/"):
        tail = pattern[3:]
        segments = path.split("/")
        return any(fnmatch.fnmatchcase("/".join(segments[i:]), tail) for i in range(len(segments)))
    return fnmatch.fnmatchcase(path, pattern) and path.count("/") == pattern.count("/")


# --- .env.example ---------------------------------------------------------------------------

_ASSIGNMENT = re.compile(r"^(?P<commented>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


@dataclass(frozen=True)
class Documented:
    name: str
    value: str
    commented: bool
    comment: str


def env_example() -> dict[str, Documented]:
    """Variables of .env.example (set or commented out) with the comment block above each."""
    found: dict[str, Documented] = {}
    comment: list[str] = []
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw.strip()
        match = _ASSIGNMENT.match(line)
        if match:
            name = match.group("name")
            if name in found:
                raise AssertionError(f".env.example documents {name} twice")
            found[name] = Documented(
                name, match.group("value"), bool(match.group("commented")), " ".join(comment)
            )
            comment = []
        elif line.startswith("#"):
            comment.append(line.lstrip("#").strip())
        else:
            comment = []
    return found
