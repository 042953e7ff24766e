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
