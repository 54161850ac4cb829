"""`python -m serving drain` (the serving pods' preStop hook): counting requests in flight and waiting for none."""
from __future__ import annotations

import socket

import pytest

from serving.server import connections_to, drain


def test_connections_to_counts_open_connections_to_the_port_not_the_listener():
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_server(("127.0.0.1", 0)) as other:
        port = listener.getsockname()[1]
        assert connections_to(port) == 0  # the listening socket carries no request
        client = socket.create_connection(("127.0.0.1", port))
        elsewhere = socket.create_connection(other.getsockname())
        accepted, _ = listener.accept()
        assert connections_to(port) == 1  # the server side of the connection, not the client's (another port)
        client.close()
        accepted.close()
        elsewhere.close()
        assert connections_to(port) == 0  # TIME_WAIT and closed sockets carry nothing


class FakeTime:
    def __init__(self):
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("busy_until, drained, waited", [
    (0.0, True, 6.0),      # nothing in flight: settle (5 s) + quiet (1 s)
    (8.0, True, 9.0),      # requests open until 8 s: quiet 1 s after them
    (99.0, False, 40.0),   # never idle: gives up at the timeout
])
def test_drain_serves_on_for_the_settle_time_then_waits_for_no_open_connection(busy_until, drained, waited):
    fake = FakeTime()
    result = drain(lambda: 2 if fake.now < busy_until else 0, settle=5, quiet=1, timeout=40, clock=fake.clock,
                   sleep=fake.sleep)
    assert result[0] is drained
    assert result[1] == pytest.approx(waited, abs=0.25)
