"""The delaying TCP relay (harness/delayrelay.py) that bench W5 puts between
sender and receiver: bytes intact and in order in both directions, EOF and
reset passed on, and every exchange costs the delay (loose lower bounds
only: the relay can be late on a loaded machine, never early)."""

import os
import socket
import struct
import threading
import time

import pytest

from harness.delayrelay import DelayRelay

ADDR = "127.0.0.1"
DELAY = 0.05


class EchoServer:
    """Echoes every byte back; on EOF from the client it sends "bye" and
    closes.  Records what it received per connection."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ADDR, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received = []
        self.ended = []             # "eof" or "reset" per connection
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        got = bytearray()
        self.received.append(got)
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    c.sendall(b"bye")
                    self.ended.append("eof")
                    break
                got += data
                c.sendall(data)
        except ConnectionResetError:
            self.ended.append("reset")
        finally:
            c.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def relay():
    echo = EchoServer()
    r = DelayRelay(ADDR, 0, ADDR, echo.port, delay=DELAY)
    # Port 0: let the kernel choose, then learn it from the server socket.
    r.start()
    r.port = r._server.sockets[0].getsockname()[1]
    yield r, echo
    r.stop()
    echo.close()


def recv_exactly(s, n):
    buf = bytearray()
    while len(buf) < n:
        data = s.recv(n - len(buf))
        if not data:
            break
        buf += data
    return bytes(buf)


def test_bytes_intact_and_in_order_both_ways(relay):
    r, echo = relay
    chunks = [os.urandom(1 + (i * 7919) % 30000) for i in range(60)]
    sent = b"".join(chunks)
    with socket.create_connection((ADDR, r.port), timeout=20) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for c in chunks:
            s.sendall(c)
        back = recv_exactly(s, len(sent))
    assert back == sent
    assert bytes(echo.received[0]) == sent
    conn = r.conns[0]
    assert conn.up == len(sent) and conn.down == len(sent)
    # The trace has every chunk, in arrival order.
    times = [t for t, _, _ in conn.trace]
    assert times == sorted(times)
    assert sum(n for _, d, n in conn.trace if d == "up") == len(sent)


def test_eof_is_passed_on_and_the_other_direction_still_flows(relay):
    r, echo = relay
    with socket.create_connection((ADDR, r.port), timeout=20) as s:
        s.sendall(b"hello")
        s.shutdown(socket.SHUT_WR)          # half-close
        rest = b""
        while True:
            data = s.recv(100)
            if not data:
                break
            rest += data
    # The server saw EOF (after the data), then answered through the
    # half-closed connection, then its close came through as EOF.
    assert rest == b"hellobye"
    assert echo.ended == ["eof"]
    deadline = time.time() + 5
    while r.conns[0].how is None and time.time() < deadline:
        time.sleep(0.05)
    assert r.conns[0].how == "closed"


def test_reset_is_passed_on(relay):
    r, echo = relay
    s = socket.create_connection((ADDR, r.port), timeout=20)
    s.sendall(b"x")
    assert recv_exactly(s, 1) == b"x"
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()                               # RST
    deadline = time.time() + 5
    while not echo.ended and time.time() < deadline:
        time.sleep(0.05)
    assert echo.ended == ["reset"]
    assert r.conns[0].how == "reset"


def test_upstream_refused_resets_the_client():
    port = socket.socket()
    port.bind((ADDR, 0))
    dead = port.getsockname()[1]
    port.close()                            # nothing listens there
    r = DelayRelay(ADDR, 0, ADDR, dead, delay=DELAY)
    r.start()
    try:
        rport = r._server.sockets[0].getsockname()[1]
        with socket.create_connection((ADDR, rport)) as s:
            s.settimeout(5)
            with pytest.raises(ConnectionResetError):
                s.recv(1)
        assert r.conns[0].how == "connect failed"
    finally:
        r.stop()


def test_each_exchange_costs_a_round_trip(relay):
    """Connect plus the first byte back costs the connect delay (3 one-way
    delays: SYN, SYN-ACK, ACK) and one more delay back, i.e. 2 RTT as on a
    WAN; each later exchange one RTT.  Lower bounds only (the relay may be
    late, never early); the trace shows one server flight per exchange."""
    r, echo = relay
    t0 = time.time()
    with socket.create_connection((ADDR, r.port), timeout=20) as s:
        s.sendall(b"a")
        assert recv_exactly(s, 1) == b"a"
        t1 = time.time()
        for _ in range(5):
            s.sendall(b"b")
            assert recv_exactly(s, 1) == b"b"
        t2 = time.time()
    assert t1 - t0 >= 4 * DELAY
    assert t2 - t1 >= 5 * 2 * DELAY
    directions = [d for _, d, _ in r.conns[0].trace]
    assert directions[:12] == ["up", "down"] * 6
