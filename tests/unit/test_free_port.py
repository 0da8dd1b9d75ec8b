import socket
from pathlib import Path

from agentstore_cli.launch import free_port


def _ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_free_ports_come_from_below_the_range_outgoing_connections_use() -> None:
    # An outgoing connection's local port is drawn from the ephemeral range; a listener
    # started later on such a port could collide with it (a Sentinel did, on CI).
    ports = [free_port() for _ in range(50)]

    assert all(1024 <= port < _ephemeral_low() for port in ports)
    assert len(set(ports)) > 40  # drawn at random, not one port handed out each time


def test_a_free_port_can_be_listened_on() -> None:
    port = free_port()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
