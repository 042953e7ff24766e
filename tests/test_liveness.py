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
import subprocess
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


@pytest.mark.parametrize("flavour", ["patched", "stock", "probe"])
def test_reused_delivery_sends_no_rset(world, flavour):
    """Four spaced messages over one cached TLS connection.  Stock sends
    an RSET probe before each reuse (rset=3 at the receiver); the series
    sends none: MAIL, RCPT and DATA are the whole of a reused delivery.
    With smtp_connection_reuse_rset_probe = yes ("probe") the series sends
    the probe as stock does."""
    r = world.postfix_receiver("r1", [RECV])
    if flavour == "probe":
        s = world.sender({"f.test": "[%s]:25" % RECV}, reuse=True,
                         smtp_connection_reuse_rset_probe="yes")
    else:
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
    if flavour in ("stock", "probe"):
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


@pytest.mark.parametrize("reply", ["421", "451"])
def test_race_first_reply(world, reply):
    """Plaintext (level none, cached by smtp_connection_cache_destinations):
    the server answers the first command of a reused connection with 421
    (shutting down), or with 451 as Exchange and qmail do at their idle
    timeout, and closes.  That reply is not a delivery failure: retried
    over a new connection, accepted exactly once, no deferral.  Before
    issue 20 the 451 was taken as the reply to MAIL FROM: deferred."""
    r = world.postfix_receiver("r1", [RECV])
    p = FaultProxy(PROXY, 25, RECV)
    world.things.append(p)
    s = world.sender({"f.test": "[%s]:25" % PROXY}, reuse=True, level="none", **FAST)
    world.start()
    ids = world.send(s, "user@f.test", n=1)
    wait_for(lambda: len(r.accepted_ids()) == 1, 30, "1 message")
    time.sleep(2)
    p.arm(reply)
    ids += world.send(s, "user@f.test", n=1)
    settle(s, r, ids)
    assert len(p.conns) == 2 and p.conns[0].dropped > 0
    text = {"421": r"421 4\.3\.2 Service shutting down.*",
            "451": r"451 4\.7\.0 Timeout waiting for client input"}[reply]
    assert s.grep(r"cached connection to \S+: host said: %s \(in reply to MAIL "
                  r"FROM command\); retrying over a new connection" % text,
                  ident="smtp"), s.log_tail(30)


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


# -- issue 20: what the RSET probe guarded against ---------------------------

RSET_502 = "502 5.5.2 Error: command not recognized"


def statuses(s, rcpt):
    return [m for t in s.grep(r"to=<%s>" % re.escape(rcpt), ident="smtp")
            for m in re.findall(r"status=(\w+)", t)]


@pytest.mark.parametrize("first", ["rejected-recipient", "address-probe"])
def test_server_rejects_rset(world, first):
    """A receiver (aiosmtpd) that answers RSET with 502 and keeps its mail
    transaction.  The first transaction ends in RSET: every recipient
    rejected, or an address verification probe (which always ends with
    RSET).  The connection must not be cached: otherwise the next
    delivery's MAIL FROM gets "503 nested MAIL command", the message is
    bounced (5.5.1), and the pipelined RCPT and DATA put an empty message
    into the old transaction.  The series before this fix did exactly
    that; stock's RSET probe saw the 502 and made a new connection."""
    r = world.aio_receiver("a1", RECV, reject_rcpt="bad", rset_reply=RSET_502,
                           pipelining=True)
    s = world.sender({"f.test": "[%s]:25" % RECV}, reuse=True, **FAST)
    world.start()
    if first == "rejected-recipient":
        world.send(s, "bad@f.test")
        s.wait_log(r"to=<bad@f\.test>.*status=bounced", ident="smtp", timeout=30)
    else:
        out = subprocess.run([s.cmd("sendmail"), "-C", s.conf, "-bv",
                              "user@f.test"], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        s.wait_log(r"to=<user@f\.test>.*status=deliverable", ident="smtp",
                   timeout=30)
    wait_for(lambda: r.rsets() == [RSET_502], 30, "the RSET reply\n" + s.log_tail(20))
    time.sleep(2)
    world.send(s, "user@f.test")
    wait_for(lambda: not s.queued() and statuses(s, "user@f.test")[-1:] != ["deliverable"],
             60, "the second message's delivery\n" + s.log_tail(30))
    events = r.message_events()
    assert statuses(s, "user@f.test")[-1:] == ["sent"], \
        (s.grep(r"to=<user@f\.test>", ident="smtp"), events)
    assert "bounced" not in statuses(s, "user@f.test")
    assert len(events) == 1, events
    assert events[0]["size"] > 0 and events[0]["rcpt"] == ["user@f.test"], events
    assert r.counts().connections == 2
    assert s.grep(r"not caching the connection to \S+: the server did not "
                  r"accept the RSET command", ident="smtp"), s.log_tail(30)


def test_no_content_after_rejected_mail_from(world):
    """A broken receiver rejects MAIL FROM but keeps the sender, and then
    accepts the pipelined RCPT and DATA (the state a receiver is in when it
    did not reset an earlier transaction).  No content may reach it: the client
    disconnects after the 354 instead of sending ".", and the message is
    not delivered as an empty one."""
    r = world.aio_receiver("a1", RECV, mail_reply="550 5.7.1 Sender rejected",
                           pipelining=True)
    s = world.sender({"f.test": "[%s]:25" % RECV}, reuse=True, **FAST)
    world.start()
    world.send(s, "user@f.test")
    s.wait_log(r"to=<user@f\.test>.*status=bounced", ident="smtp", timeout=30)
    assert s.grep(r"warning: host \S+ accepted DATA after it rejected MAIL "
                  r"FROM; disconnecting without sending data", ident="smtp")
    time.sleep(1)
    assert r.message_events() == []


def test_unsolicited_input_not_cached(world):
    """A receiver that sends an unsolicited line right behind its reply to
    end of data, in the same write: the input sits in smtp's stream buffer,
    where the liveness check of a cached connection cannot see it.  Such a
    session is not cached (and would otherwise be reused, its input lost)."""
    r = world.aio_receiver("a1", RECV, data_extra="421 4.4.2 a1 closing soon")
    s = world.sender({"f.test": "[%s]:25" % RECV}, reuse=True, **FAST)
    world.start()
    ids = world.send(s, "user@f.test", n=2, spacing=3)
    wait_for(lambda: set(ids) <= set(r.message_ids()) and not s.queued(), 60,
             "two messages\n" + s.log_tail(30))
    assert s.grep(r"not caching the connection to \S+: the server sent \d+ "
                  r"bytes without being asked", ident="smtp"), s.log_tail(30)
    assert r.counts().connections == 2
    assert not s.grep(r"status=(deferred|bounced)", ident="smtp")


def delays(s, rcpt):
    """The delays=a/b/c/d of the last delivery to rcpt, as floats."""
    t = [x for x in s.grep(r"to=<%s>.*status=sent" % re.escape(rcpt), ident="smtp")]
    return [float(v) for v in re.search(r"delays=([\d./]+)", t[-1]).group(1).split("/")]


@pytest.mark.parametrize("level", ["encrypt", "none"])
def test_silent_cached_connection(world, level):
    """A cached connection goes silent: the server hangs, or a NAT or
    firewall dropped the flow without a reset (the fault relay swallows
    the client's bytes and answers nothing).  The first reply of a reused
    connection is awaited for smtp_rset_timeout (here 10s; the time limit
    of the RSET probe that the series removed), not smtp_mail_timeout
    (300s), and the delivery is retried over a new connection, without a
    deferral.  The series before this fix waited 300s and deferred."""
    r = world.postfix_receiver("r1", [RECV])
    p = FaultProxy(PROXY, 25, RECV)
    world.things.append(p)
    s = world.sender({"f.test": "[%s]:25" % PROXY}, reuse=True, level=level,
                     smtp_rset_timeout="10s", **FAST)
    world.start()
    ids = world.send(s, "user@f.test", n=1)
    wait_for(lambda: len(r.accepted_ids()) == 1, 30, "1 message")
    time.sleep(2)
    p.arm("mute")
    ids += world.send(s, "user@f.test", n=1)
    settle(s, r, ids)
    assert s.grep(r"cached connection to \S+: no reply within 10s while sending "
                  r"MAIL FROM; retrying over a new connection", ident="smtp"), \
        s.log_tail(30)
    assert len(p.conns) == 2 and p.conns[0].dropped > 0
    d = delays(s, "user@f.test")
    print("delays= of the retried delivery:", d)
    assert sum(d) < 60, d


def test_lmtp_reused_connection_lost(world):
    """LMTP caches connections too (lmtp_connection_cache_destinations), and
    the liveness check applies to it: a cached LMTP connection that the
    server closes as the next LHLO-less transaction starts is retried over
    a new connection, delivered once, with no deferral."""
    r = world.aio_receiver("l1", RECV, port=24, lmtp=True)
    p = FaultProxy(PROXY, 24, RECV, target_port=24)
    world.things.append(p)
    s = world.sender({"f.test": "[%s]:24" % PROXY}, reuse=False, level="none",
                     **FAST)
    s.main.update({
        "transport_maps": s.write_table("transport", {
            "f.test": "lmtp:inet:[%s]:24" % PROXY}),
        "lmtp_connection_cache_destinations": "[%s]:24" % PROXY,
        "lmtp_connection_cache_time_limit": "30s",
        "lmtp_tls_security_level": "none",
    })
    world.start()
    ids = world.send(s, "user@f.test", n=1)
    wait_for(lambda: len(r.message_ids()) == 1, 30, "1 message\n" + s.log_tail(20))
    time.sleep(2)
    p.arm("close")
    ids += world.send(s, "user@f.test", n=1)
    wait_for(lambda: set(ids) <= set(r.message_ids()) and not s.queued(), 60,
             "2 messages\n" + s.log_tail(30))
    assert sorted(r.message_ids()) == sorted(ids)
    assert not s.grep(r"status=(deferred|bounced)", ident="lmtp"), s.log_tail(30)
    assert s.grep(r"cached connection to \S+ was lost while sending MAIL FROM, "
                  r"before its first reply; retrying over a new connection",
                  ident="lmtp"), s.log_tail(30)
    assert len(p.conns) == 2 and p.conns[0].dropped > 0
