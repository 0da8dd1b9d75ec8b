"""Runs code in a forked child (`os.fork` or `multiprocessing`'s fork start method) with a
deadline: a child that hangs is killed and fails the test instead of stalling the suite."""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any, Literal

How = Literal["os.fork", "multiprocessing"]
HOWS: tuple[How, ...] = ("os.fork", "multiprocessing")


def _run_and_exit(fn: Callable[[], Any], out: int) -> None:
    code = 1
    try:
        try:
            reply = {"ok": fn()}
        except BaseException:
            reply = {"error": traceback.format_exc()}
        data = json.dumps(reply).encode()
        while data:
            data = data[os.write(out, data) :]
        code = 0
    finally:
        os._exit(code)  # never back into pytest


class Child:
    """`fn()` running in a forked child; `result()` is its JSON-able return value."""

    def __init__(self, fn: Callable[[], Any], how: How) -> None:
        self._read, write = os.pipe()
        self._proc: Any = None
        if how == "os.fork":
            pid = os.fork()
            if pid == 0:
                os.close(self._read)
                _run_and_exit(fn, write)
            self.pid = pid
        else:
            self._proc = multiprocessing.get_context("fork").Process(
                target=_run_and_exit, args=(fn, write)
            )
            self._proc.start()
            self.pid = self._proc.pid
        os.close(write)

    def result(self, timeout: float = 120.0) -> Any:
        """The child's return value; AssertionError if it raised, or hung for `timeout` s."""
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                if select.select([self._read], [], [], left)[0]:
                    chunk = os.read(self._read, 65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            else:
                os.kill(self.pid, signal.SIGKILL)
                raise AssertionError(f"the forked child hung for {timeout:g} s and was killed")
        finally:
            os.close(self._read)
            if self._proc is not None:
                self._proc.join(timeout=30)
            else:
                os.waitpid(self.pid, 0)
        reply = json.loads(b"".join(chunks) or b'{"error": "the child died without a reply"}')
        if "error" in reply:
            raise AssertionError(f"in the forked child:\n{reply['error']}")
        return reply["ok"]


class Started:
    """The child says when its work starts, so the parent's work overlaps it."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()

    def tell(self) -> None:
        """In the child: the work starts now."""
        os.write(self._write, b".")

    def wait(self, timeout: float = 60.0) -> None:
        """In the parent: until the child has started, at most `timeout` s."""
        if not select.select([self._read], [], [], timeout)[0]:
            raise AssertionError(f"the forked child did not start within {timeout:g} s")
        os.read(self._read, 1)
