"""`python -m serving drain` (the serving pods' preStop hook): counting requests in flight and waiting for none."""
from __future__ import annotations

import pytest

from serving.server import connections_to, drain, open_connections

# /proc/net/tcp: a listener on 8080 (0x1F90), two connections to it (ESTABLISHED, SYN_RECV), one in TIME_WAIT, one
# established to another port (8081 = 0x1F91)
TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:D2F2 03 00000000:00000000 00:00000000 00000000  1000        0 3 1 0 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:D2F4 06 00000000:00000000 00:00000000 00000000     0        0 0 3 0
   4: 0100007F:1F91 0100007F:D2F6 01 00000000:00000000 00:00000000 00000000  1000        0 4 1 0 20 4 30 10 -1
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:C000 01 00000000:00000000 00:00000000 00000000  1000        0 5 1 0 20 4 30 10 -1
"""


def test_open_connections_counts_requests_that_may_be_in_flight_on_the_port():
    assert open_connections(TCP, 8080) == 2
    assert open_connections(TCP, 8081) == 1
    assert open_connections(TCP6, 8080) == 1
    assert open_connections(TCP.splitlines()[0], 8080) == 0


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


def test_connections_to_reads_ipv4_and_ipv6_tables(tmp_path):
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    assert connections_to(8080, tmp_path) == 3
    assert connections_to(8080, tmp_path / "missing") == 0
