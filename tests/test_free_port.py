"""Listener ports for the tests' processes are drawn where no outgoing connection can take them before they bind."""

from __future__ import annotations

import socket
from pathlib import Path

from .support.processes import free_port


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except OSError:
        return 0


def test_ports_are_distinct_free_and_below_the_kernels_ephemeral_range() -> None:
    """A port in the ephemeral range can become the source port of any process's next outgoing connection between
    the draw and the listener's bind (seen in CI: a gateway's admin listener found its port taken)."""
    low = _ephemeral_low()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports), "a port was handed out twice"
    for port in ports:
        if low > 20_000:
            assert 10_000 <= port < low
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))  # free: it binds


def test_a_cluster_node_gets_its_bus_port_below_the_ephemeral_range_too() -> None:
    low = _ephemeral_low()
    port = free_port(with_bus=True)
    if low > 20_000:
        assert port + 10_000 < low
    for p in (port, port + 10_000):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", p))
