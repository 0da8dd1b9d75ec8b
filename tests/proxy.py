"""A loopback TCP proxy that can refuse connections: an outage without stopping the server."""

from __future__ import annotations

import contextlib
import socket
import threading
from contextlib import ExitStack

from agentstore_cli.launch import CosmosServer, free_port, start_cosmos_server
from tests.services import started


class TcpProxy:
    """Forwards loopback TCP connections on `port` to `target` (set it before the first
    connection); `refuse()` closes the port and every connection (clients get "connection
    refused") until `accept()` opens it again."""

    def __init__(self, target: int = 0) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.accept()

    def accept(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._serve, args=(listener,), daemon=True).start()

    def refuse(self) -> None:
        with self._lock:
            doomed, self._sockets = self._sockets, set()
            if self._listener is not None:
                doomed.add(self._listener)
            self._listener = None
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return  # refuse() closed the listener
            with self._lock:
                self._sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(src, dst), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def cosmos_behind_proxy(stack: ExitStack) -> tuple[CosmosServer, TcpProxy]:
    """A Cosmos DB test server of this test's own, reached through a `TcpProxy` (the server
    tells the SDK to use the proxy's port after the first request); `stack` stops both.
    `proxy.refuse()` is then an outage that keeps the server's data: unlike a restart of this
    in-memory server."""
    proxy = TcpProxy()
    stack.callback(proxy.refuse)
    server = started(stack, lambda: start_cosmos_server(advertised_port=proxy.port))
    proxy.target = server.port
    return server, proxy
