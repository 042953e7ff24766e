"""Receivers' per-connection limits with TLS connection reuse on (the
development series' default): a cached connection respects the limits that
real receivers impose on each connection, and no message is deferred, lost
or delivered twice.  The receiver is Debian's aiosmtpd (harness/aioreceiver.py),
which imposes them:

  messages per connection  Yahoo's servers close a connection after 20
                           messages, without a reply, when the next MAIL
                           FROM arrives.  Here: 3 messages.
  session time             Microsoft's servers end a session after about 20
                           minutes.  Here: 5 s; an idle session ends with an
                           unsolicited "421 4.4.2", a busy one with that reply
                           to the first command after its transaction.

Messages are spaced 2 s apart (a burst would be reused by qmgr's on-demand
caching whatever TLS reuse does); counts are taken at the receiver.
"""

import time

import pytest

from harness.mailgen import header
from harness.world import wait_for

ADDR = "127.0.0.31"


def deliver(world, s, n):
    ids = world.send(s, "user@limits.test", n=n, spacing=2)
    wait_for(lambda: len(s.grep(r"to=<user@limits\.test>.*status=sent")) >= n, 60,
             "%d messages sent\n%s" % (n, s.log_tail()))
    return ids


def check_once(r, ids):
    got = sorted(header(m, "Message-ID") for m in r.messages())
    assert got == sorted(ids), "lost or duplicated: %s" % got


@pytest.mark.parametrize("level", ["may", "encrypt"])
def test_messages_per_connection_limit(world, level):
    n, limit = 8, 3
    r = world.aio_receiver("r1", ADDR, max_messages=limit)
    s = world.sender({"limits.test": "[%s]:25" % ADDR}, reuse=True, level=level)
    world.start()
    ids = deliver(world, s, n)
    check_once(r, ids)
    c = r.counts()
    limits = [e for e in r._events() if e["ev"] == "limit"]
    # Each connection carried 3 messages, then the server closed it at the
    # next MAIL FROM; that delivery went out over a new connection.
    assert len(limits) == (n - 1) // limit, limits
    assert c.connections == -(-n // limit) and c.handshakes == c.connections, c
    assert c.plaintext_messages == 0
    assert not s.grep(r"status=(deferred|bounced)"), s.log_tail()
    assert len(s.grep(r"to=<user@limits\.test>.*conn_use=%d.*status=sent" % limit)) \
        == n // limit


def test_session_time_limit(world):
    n, seconds = 7, 5
    r = world.aio_receiver("r1", ADDR, max_session=seconds)
    s = world.sender({"limits.test": "[%s]:25" % ADDR}, reuse=True, level="may")
    world.start()
    ids = deliver(world, s, n)
    check_once(r, ids)
    c = r.counts()
    limits = [e for e in r._events() if e["ev"] == "limit"]
    assert limits and all(e["what"] == "session" for e in limits), limits
    # 7 messages 2 s apart take 12 s or more: at least 3 sessions of 5 s,
    # each of which carried more than one message.
    assert 3 <= c.connections < n, c
    assert c.plaintext_messages == 0
    assert not s.grep(r"status=(deferred|bounced)"), s.log_tail()


@pytest.mark.parametrize("close_idle", ["yes", "no"])
def test_idle_connections_do_not_add_to_a_servers_connections(world, close_idle):
    """Receivers that limit connections per client IP address (Microsoft's
    "451 4.7.652 ... exceeded the maximum number of connections") must see
    no more with reuse on than with reuse off.  Two domains on one server
    with TLS policies that cannot share a connection (different cipher
    grades): without reuse, one connection at a time; with reuse, the
    connection cached for one domain stays open while the other domain's
    delivery opens its own, unless smtp(8) closes the idle one first (the
    default, smtp_tls_connection_reuse_close_idle = yes).  With "no", each
    policy keeps its own connection: two at once, each reused."""
    a, b = "[%s]:25" % ADDR, "[%s]" % ADDR
    r = world.aio_receiver("r1", ADDR)
    s = world.sender({"a.limits.test": a, "b.limits.test": b}, reuse=True,
                     smtp_tls_connection_reuse_close_idle=close_idle)
    s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {
        a: "encrypt ciphers=high", b: "encrypt ciphers=medium"})
    world.start()
    ids = []
    for i, d in enumerate(["a", "b", "a", "b"]):
        if i:
            time.sleep(2)
        ids += world.send(s, "user@%s.limits.test" % d, tag=d)
        wait_for(lambda: len(r.message_events()) > i, 30,
                 "message %d\n%s" % (i + 1, s.log_tail()))
    check_once(r, ids)
    c = r.counts()
    assert c.plaintext_messages == 0
    assert not s.grep(r"status=(deferred|bounced)"), s.log_tail()
    closed = s.grep(r"closed an idle cached TLS connection that was made "
                    r"under a different TLS policy")
    if close_idle == "yes":
        # One connection at a time, as without reuse: each delivery closed
        # the other policy's idle connection before it made its own.
        assert r.peak_connections() == 1, [e for e in r._events() if "t" in e]
        assert c.connections == 4 and closed, (c, s.log_tail())
    else:
        assert r.peak_connections() == 2, [e for e in r._events() if "t" in e]
        assert c.connections == 2 and not closed, (c, s.log_tail())
