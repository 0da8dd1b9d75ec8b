"""Running a compose service's command on this machine, with its environment pointed at
local services instead of the compose ones."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .files import DOCKERFILE, ROOT, VENV_BIN, dockerfile_instructions, service_environment

# Variables that name a service; each is replaced by the local equivalent.
ENDPOINTS = ("CELERY_BROKER_URL", "POSTGRES_CONNECTION_STRING", "COSMOS_ENDPOINT")


def command_of(service: dict[str, Any]) -> list[str]:
    """The service's `command`, else the image's CMD, as an argument list."""
    import json

    command = service.get("command")
    if command is None:
        cmd = [i for i in dockerfile_instructions(DOCKERFILE) if i.keyword == "CMD"][-1]
        command = json.loads(cmd.arguments)
    assert isinstance(command, list), "use the exec form: a string command goes through sh -c"
    return [str(part) for part in command]


def localized_environment(
    service: dict[str, Any],
    dotenv: dict[str, str],
    compose_hosts: set[str],
    local: Callable[[str], str],
) -> dict[str, str]:
    """The service's environment as compose would set it, endpoints swapped for local ones.

    A value still naming a compose host afterwards means a variable we do not know how to
    map; that fails rather than letting the process quietly use a default.
    """
    env = service_environment(service, dotenv)
    hosts = "|".join(re.escape(h) for h in sorted(compose_hosts))
    names_host = re.compile(rf"//(?:[^/@\s]*@)?(?:{hosts})(?:[:/]|$)")
    out: dict[str, str] = {}
    for key, value in env.items():
        if key in ENDPOINTS and value:
            out[key] = local(key)
        else:
            assert not names_host.search(value), f"{key}={value!r}: no local mapping for it"
            out[key] = value
    return out


def base_environment() -> dict[str, str]:
    """A clean environment: the test runner's own settings must not leak into the process.

    The working directory is a temporary one (so no developer `.env` is read) and the code is
    imported from the repository, as the image imports it from site-packages.
    """
    return {
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class NativeProcess:
    """A service command running here; `stop()` it."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes]

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode} before {text!r}:\n"
                    + self.tail()
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {text!r} within {timeout} s:\n{self.tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM as `docker stop` sends it; SIGKILL the group if it outstays `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
        return self.process.returncode


def start(name: str, command: list[str], env: dict[str, str], workdir: Path) -> NativeProcess:
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        command,
        env=env,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group, so a stuck one is killed with its children
    )
    return NativeProcess(name, process, log_path, log)


def processes(where: Callable[[list[str], dict[str, str]], bool]) -> list[int]:
    """Pids of live processes whose (argv, environment) satisfy `where` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            raw_env = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if state == "Z":
            continue  # exited, waiting for its parent to reap it
        env = dict(item.split("=", 1) for item in raw_env if "=" in item)
        if where(argv, env):
            found.append(int(entry.name))
    return found
