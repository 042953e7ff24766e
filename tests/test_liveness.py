"""A reused connection costs no round trip for its liveness check.

Issue 15, item 2.  Stock smtp(8) sends RSET and waits for its reply before
it reuses a cached connection: one round trip per reused delivery.  The
series checks a cached connection without a round trip instead (a cached
connection that is readable was closed, or carries unsolicited input such
as a 421 reply, and is not used), and recognizes a connection that dies
after the check by its first reply (EOF, reset, 421): nothing has been
delivered then, and the delivery is retried over a new connection without
a deferral.

Everything is counted at the receivers: a real Postfix smtpd, reached
directly or through harness/faultproxy.py, which can end a connection at
the client's next bytes (the race: the server closes just after the
check).  Messages are spaced 3 s apart, so that reuse comes from the
connection cache, not from qmgr's burst.
"""

import re
import smtplib
import time

import pytest

from harness import mailgen
from harness.faultproxy import FaultProxy
from harness.world import wait_for

PROXY = "127.0.0.40"
RECV = "127.0.0.41"
FAST = {
    "minimal_backoff_time": "3s", "maximal_backoff_time": "5s",
    "queue_run_delay": "3s",
}
RETRIED = (r"cached connection to \S+ was lost while sending MAIL FROM, "
           r"before its first reply; retrying over a new connection")


def settle(s, r, ids):
    """Every message accepted exactly once, none in plaintext unless the
    world is plaintext, the queue empty, no deferral, no crash."""
    wait_for(lambda: set(ids) <= set(r.accepted_ids()) and not s.queued(),
             60, "every message accepted and the queue empty\n" + s.log_tail(40))
    got = r.accepted_ids()
    assert sorted(got) == sorted(ids), "lost or duplicate messages: %s" % got
    assert not s.grep(r"status=(deferred|bounced)", ident="smtp"), s.log_tail(40)
    for ident in ("smtp", "scache", "tlsproxy"):
        bad = s.grep(r"\b(fatal|panic):", ident=ident)
        assert not bad, "%s: %s" % (ident, bad)
    assert not s.grep(r"killed by signal", ident="master")


def smtpd_commands(r):
    """The command counts of each ended receiver session, from smtpd's
    "disconnect from ... ehlo=2 starttls=1 mail=3 rcpt=2/3 ... commands=N"
    (a count n/m is m commands, n of them accepted)."""
    out = []
    for line in r.grep(r"disconnect from "):
        out.append({k: int(m or n) for k, n, m in
                    re.findall(r" (\w+)=(\d+)(?:/(\d+))?", line)})
    return out


@pytest.mark.parametrize("flavour", ["patched", "stock"])
def test_reused_delivery_sends_no_rset(world, flavour):
    """Four spaced messages over one cached TLS connection.  Stock sends
    an RSET probe before each reuse (rset=3 at the receiver); the series
    sends none: MAIL, RCPT and DATA are the whole of a reused delivery."""
    r = world.postfix_receiver("r1", [RECV])
    s = world.sender({"f.test": "[%s]:25" % RECV}, reuse=True, flavour=flavour)
    world.start()
    ids = world.send(s, "user@f.test", n=4, spacing=3)
    wait_for(lambda: len(r.accepted_ids()) == 4, 60, "4 messages")
    s.stop()                    # closes the cached connection
    wait_for(lambda: smtpd_commands(r), 30, "the receiver's disconnect")
    c = r.counts()
    assert (c.connections, c.handshakes, c.messages, c.plaintext_messages) == (1, 1, 4, 0)
    [cmds] = smtpd_commands(r)
    assert (cmds["mail"], cmds["rcpt"], cmds["data"]) == (4, 4, 4)
    if flavour == "stock":
        assert cmds.get("rset") == 3, cmds
    else:
        assert "rset" not in cmds, cmds
    assert sorted(r.accepted_ids()) == sorted(ids)


def test_receiver_421_while_cached(world):
    """The receiver times out the idle cached connection (smtpd_timeout
    3s): it sends "421 ... timeout exceeded" and closes.  The next delivery
    sees the unsolicited reply without sending anything, does not use the
    connection, and makes a new one: no deferral, no failed attempt."""
    r = world.postfix_receiver("r1", [RECV], smtpd_timeout="3s")
    s = world.sender({"f.test": "[%s]:25" % RECV}, reuse=True, **FAST)
    world.start()
    ids = world.send(s, "user@f.test", n=1)
    wait_for(lambda: len(r.accepted_ids()) == 1, 30, "1 message")
    wait_for(lambda: r.grep(r"timeout after END-OF-MESSAGE"), 30,
             "the receiver's idle timeout")
    time.sleep(1)
    ids += world.send(s, "user@f.test", n=2, spacing=1)
    settle(s, r, ids)
    c = r.counts()
    assert (c.connections, c.handshakes) == (2, 2)
    assert s.grep(r"not reusing the cached connection to \S+: the server sent "
                  r"\d+ bytes without being asked", ident="smtp"), s.log_tail(30)
    # Nothing was sent over the dead connection.
    [first] = [x for x in smtpd_commands(r) if x.get("mail") == 1][:1]
    assert "rset" not in first


@pytest.mark.parametrize("action", ["close", "reset"])
def test_race_server_closes_after_check(world, action):
    """The race: the cached TLS connection passes the check, then the
    server end closes (or resets) as the first command arrives.  tlsproxy
    passes the loss on, smtp sees no first reply, delivers nothing over
    it, and retries over a new connection at once: every message accepted
    exactly once, no deferral, no plaintext, and the new connection is
    cached and reused in turn."""
    r = world.postfix_receiver("r1", [RECV])
    p = FaultProxy(PROXY, 25, RECV)
    world.things.append(p)
    s = world.sender({"f.test": "[%s]:25" % PROXY}, reuse=True, **FAST)
    world.start()
    ids = world.send(s, "user@f.test", n=1)
    wait_for(lambda: len(r.accepted_ids()) == 1, 30, "1 message")
    time.sleep(2)
    p.arm(action)
    ids += world.send(s, "user@f.test", n=1)
    wait_for(lambda: len(r.accepted_ids()) == 2, 30, "2 messages\n" + s.log_tail(30))
    time.sleep(2)
    ids += world.send(s, "user@f.test", n=1)
    settle(s, r, ids)
    assert len(p.conns) == 2, [(c.n, c.ended) for c in p.conns]
    assert p.conns[0].dropped > 0, "the sender never wrote to the dead connection"
    assert s.grep(RETRIED, ident="smtp"), s.log_tail(30)
    c = r.counts()
    assert (c.handshakes, c.plaintext_messages) == (2, 0)
    conns = r.connections()
    assert [len(x["messages"]) for x in conns] == [1, 2], conns


def test_race_first_reply_421(world):
    """Plaintext (level none, cached by smtp_connection_cache_destinations):
    the server answers the first command of a reused connection with 421
    and closes.  The 421 is not a delivery failure: retried over a new
    connection, accepted exactly once, no deferral."""
    r = world.postfix_receiver("r1", [RECV])
    p = FaultProxy(PROXY, 25, RECV)
    world.things.append(p)
    s = world.sender({"f.test": "[%s]:25" % PROXY}, reuse=True, level="none", **FAST)
    world.start()
    ids = world.send(s, "user@f.test", n=1)
    wait_for(lambda: len(r.accepted_ids()) == 1, 30, "1 message")
    time.sleep(2)
    p.arm("421")
    ids += world.send(s, "user@f.test", n=1)
    settle(s, r, ids)
    assert len(p.conns) == 2 and p.conns[0].dropped > 0
    assert s.grep(r"cached connection to \S+: host said: 421 4\.3\.2 Service shutting "
                  r"down.* \(in reply to MAIL FROM command\); retrying over a new "
                  r"connection", ident="smtp"), s.log_tail(30)


def test_rejected_recipient_keeps_connection(world):
    """A transaction with a rejected recipient between accepted ones ends
    normally; the connection stays cached, and the next spaced message
    rides it without an RSET."""
    r = world.postfix_receiver(
        "r1", [RECV],
        smtpd_recipient_restrictions="check_recipient_access "
                                     "inline:{bad@f.test=REJECT}")
    s = world.sender({"f.test": "[%s]:25" % RECV}, reuse=True)
    world.start()
    msgid, data = mailgen.simple("a@f.test", "rej", 0)
    with smtplib.SMTP("127.0.0.1", s.inject_port, timeout=60) as smtp:
        # Null sender: the bounce for bad@ is not sent anywhere.
        smtp.sendmail("", ["a@f.test", "bad@f.test", "c@f.test"], data)
    wait_for(lambda: msgid in r.accepted_ids(), 30, "the first message")
    assert r.grep(r"reject: RCPT from \S+: 554 5\.7\.1 <bad@f\.test>")
    s.wait_log(r"to=<bad@f\.test>.*status=bounced", ident="smtp", timeout=30)
    time.sleep(3)
    ids = world.send(s, "user@f.test", n=1)
    wait_for(lambda: set(ids) <= set(r.accepted_ids()), 30, "the second message")
    c = r.counts()
    assert (c.connections, c.handshakes, c.messages) == (1, 1, 2)
    s.stop()
    wait_for(lambda: smtpd_commands(r), 30, "the receiver's disconnect")
    [cmds] = smtpd_commands(r)
    assert cmds["rcpt"] == 4 and cmds["mail"] == 2 and "rset" not in cmds, cmds
