"""What smtp(8) does with a cached TLS connection that it finds by server
address and does not use (issue 13, items 2 and 3).

unparsable: a cached entry whose properties this build cannot parse (as
    an older or newer build could have written them) is closed, never put
    back in the cache.  The test takes the connection that smtp(8) cached
    out of scache(8) (harness/scacheclient.py speaks scache's protocol) and
    puts it back with properties cut in half; the next delivery must log
    "bad cached endp properties", and the connection must be gone from the
    cache and closed at the receiver, well before its 120 s cache time.
    smtp(8) runs under valgrind memcheck: the decision to close must not
    depend on an uninitialised value (before the fix, policy_mismatch was
    not set on that path; its stack garbage happened to be zero here, so
    only memcheck shows the bug).

To show what a test does without the fix, run it with SAVEBACK_SMTP set to
another smtp(8) program (for example one saved from an earlier build): the
sender then runs that program instead of the installed one.

alternation: two destinations whose TLS policies differ only in match names
    (a.test: "secure match=a.test", b.test: "secure match=b.test") share
    one lookup key for one server address, and that address presents a
    certificate for a.test on some connections and one for b.test on
    others (a load balancer, no SNI).  The address is a TCP relay
    (harness/faultproxy.py) in front of two Postfix receivers, rx with a
    certificate for a.test only and ry with one for b.test only; the test
    points the relay at rx before each a.test message and at ry before
    each b.test message, so that every new connection satisfies the
    delivery that makes it and only reuse decides the count.  Mail: a b b
    a a b b a, 2 s apart (each delivery finished before the next).
    Counted at the receivers: one TLS handshake each.  Before the fix a
    delivery tried only the first cached connection and made a new one
    when that was the other destination's: 2 + 2.

expiry: with smtp_tls_connection_cache_time_limit = 4s, one a.test
    message leaves connection c1 cached until 4 s after its delivery; then
    b.test messages (whose policy the receiver's certificate never
    satisfies: each attempt refuses c1, makes its own connection, fails
    verification and is deferred) come every 1.5 s for 12 s.  Each early
    b.test attempt finds c1 and saves it back, for the rest of its cache
    period only: the sender closes c1 on time (the receiver logs its
    disconnect before the fifth b.test attempt connects, 3.5 s after the
    deadline), and later attempts find nothing cached.  Before the fix
    every save-back gave c1 a fresh 4 s, and it stayed open as long as
    b.test mail kept coming.

old-format: an entry without the end of its cache period (as smtp(8)
    before this change wrote them) is closed like any unparsable entry.
"""

import os
import re
import shutil
import time

import pytest

from harness.faultproxy import FaultProxy
from harness.scacheclient import ScacheClient, label_from_log
from harness.world import wait_for

SMTP = os.environ.get("SAVEBACK_SMTP")
VALGRIND = shutil.which("valgrind")


def smtp_wrapper(s, verbose=False, memcheck_dir=None):
    """Run the sender's smtp(8) through a wrapper: SAVEBACK_SMTP instead of
    the installed program, -v, valgrind memcheck, as asked."""
    prog = SMTP or '"$REAL"'
    pre = ""
    if memcheck_dir:
        os.makedirs(memcheck_dir)
        os.chmod(memcheck_dir, 0o1777)
        pre = ("%s --tool=memcheck --error-exitcode=0 --log-file=%s/smtp.%%p.log "
               % (VALGRIND, memcheck_dir))
    s.wrap_daemons({"smtp": "exec %s%s %s\"$@\"" % (pre, prog, "-v " if verbose else "")})


def connection_of(r, msgid):
    """(smtpd pid, index of its 'connect from' record) of the receiver's
    connection that accepted a message."""
    recs = r.log_records()
    qid = None
    for ident, pid, text in recs:
        m = re.match(r"([0-9A-F]+): message-id=(\S+)", text)
        if m and m.group(2) == msgid:
            qid = m.group(1)
    for n, (ident, pid, text) in enumerate(recs):
        if qid and text.startswith(qid + ": client="):
            start = max(i for i in range(n) if recs[i][1] == pid
                        and recs[i][2].startswith("connect from "))
            return pid, start
    return None


def disconnected(r, conn):
    pid, start = conn
    return any(p == pid and t.startswith("disconnect from ")
               for i, p, t in r.log_records()[start:])


def drain(s, label):
    """Take every connection cached under label out of the cache; returns
    their properties (the connections are closed)."""
    props = []
    with ScacheClient(s.queue) as c:
        while True:
            found = c.find_endp(label)
            if found is None:
                return props
            os.close(found[0])
            props.append(found[1])


def cut_in_half(prop):
    return prop[:len(prop) // 2]


def without_deadline(prop):
    assert "\ncache_deadline=" in prop, prop
    return re.sub(r"\ncache_deadline=[0-9]+\n", "\n", prop)


@pytest.mark.parametrize("damage", [cut_in_half, without_deadline],
                         ids=["unparsable", "old-format"])
def test_unparsable_cached_entry_is_closed_not_saved_back(world, damage):
    addr = "127.0.0.41"
    r = world.postfix_receiver("r1", [addr])
    s = world.sender({"a.test": "[%s]:25" % addr}, reuse=True, cache_time=120,
                     smtp_tls_connection_cache_time_limit="120s")
    assert VALGRIND, "valgrind is not installed"
    memcheck = os.path.join(s.base, "valgrind")
    smtp_wrapper(s, verbose=True, memcheck_dir=memcheck)
    world.start()

    [first] = world.send(s, "user@a.test", tag="first")
    s.wait_log(r"^scache_clnt_save_endp: endp=", timeout=120)
    [label] = set(label_from_log(m) for m in re.findall(
        r"^smtp_reuse_addr: endp_label='(.*)'$", "\n".join(s.grep(r"^smtp_reuse_addr: "))))
    conn = connection_of(r, first)

    # Put the cached connection back with properties that this build cannot
    # parse.
    with ScacheClient(s.queue) as c:
        fd, prop = c.find_endp(label)
        bad = damage(prop)
        assert c.save_endp(120, label, bad, fd)

    [second] = world.send(s, "user@a.test", tag="second")
    s.wait_log(r"to=<user@a\.test>.*status=sent", count=2, timeout=120)
    assert s.grep(r"^warning: smtp_session_activate: bad cached endp properties$")
    assert second in r.message_ids()
    # Gone from the cache (the second delivery's own connection is there).
    left = drain(s, label)
    assert bad not in left, "the unparsable entry was saved back"
    wait_for(lambda: disconnected(r, conn), 60, "the unparsable connection to close")
    assert r.counts().plaintext_messages == 0
    # What smtp(8) decided about that connection must not depend on
    # uninitialised memory (whose value happens to be zero, or not).
    s.stop()
    logs = [os.path.join(memcheck, p) for p in os.listdir(memcheck)]
    assert logs
    for path in logs:
        wait_for(lambda: "ERROR SUMMARY" in open(path, errors="replace").read(), 60,
                 "valgrind's summary in " + path)
        text = open(path, errors="replace").read()
        assert "uninitialised" not in text, text[-4000:]


RX, RY, RELAY = "127.0.0.42", "127.0.0.43", "127.0.0.44"
NEXTHOP = {"a": "[%s]" % RELAY, "b": "[%s]:25" % RELAY}
SEQUENCE = "abbaabba"
SPACING = 2
REFUSED = (r"not reusing cached connection: server certificate name "
           r"does not satisfy the TLS policy$")


def two_policies(s, a_hop, b_hop):
    """a.test and b.test: "secure" with their own match name, nothing else
    different (the policy lookup key is the nexthop string)."""
    s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {
        a_hop: "secure match=a.test", b_hop: "secure match=b.test"})


def test_alternating_certificates_one_handshake_per_policy(world):
    rx = world.postfix_receiver("rx", [RX], cert=world.cert("mx-x", ["a.test"]))
    ry = world.postfix_receiver("ry", [RY], cert=world.cert("mx-y", ["b.test"]))
    p = FaultProxy(RELAY, 25, RX)
    world.things.append(p)
    s = world.sender({"a.test": NEXTHOP["a"], "b.test": NEXTHOP["b"]}, reuse=True,
                     level="secure", smtp_tls_connection_cache_time_limit="30s")
    two_policies(s, NEXTHOP["a"], NEXTHOP["b"])
    if SMTP:
        smtp_wrapper(s)
    world.start()

    ids = []
    for i, d in enumerate(SEQUENCE):
        if i:
            time.sleep(SPACING)
        p.target = (RX if d == "a" else RY, 25)
        ids += world.send(s, "user@%s.test" % d, tag=d)
        s.wait_log(r"to=<user@[ab]\.test>.*status=(sent|deferred)", count=i + 1,
                   timeout=60)
    wait_for(lambda: len(rx.accepted_ids() + ry.accepted_ids()) >= len(ids), 60,
             "%d messages" % len(ids))
    cx, cy = rx.counts(), ry.counts()
    print("rx: %d handshakes, %d connections; ry: %d handshakes, %d connections"
          % (cx.handshakes, cx.connections, cy.handshakes, cy.connections))
    assert sorted(rx.accepted_ids()) == sorted(
        m for m, d in zip(ids, SEQUENCE) if d == "a")
    assert sorted(ry.accepted_ids()) == sorted(
        m for m, d in zip(ids, SEQUENCE) if d == "b")
    assert cx.plaintext_messages == cy.plaintext_messages == 0
    # The deliveries did meet each other's connections and refuse them ...
    assert s.grep(REFUSED, ident="smtp")
    # ... and each destination paid one handshake in all.
    assert (cx.handshakes, cy.handshakes) == (1, 1), s.log_tail(60)


def test_refused_connection_closes_at_its_original_deadline(world):
    b_attempts = 8
    r = world.postfix_receiver("rx", [RX], cert=world.cert("mx-x", ["a.test"]))
    hops = {"a": "[%s]" % RX, "b": "[%s]:25" % RX}
    s = world.sender({"a.test": hops["a"], "b.test": hops["b"]}, reuse=True,
                     level="secure", smtp_tls_connection_cache_time_limit="4s",
                     default_destination_concurrency_failed_cohort_limit=100)
    two_policies(s, hops["a"], hops["b"])
    if SMTP:
        smtp_wrapper(s)
    world.start()

    [first] = world.send(s, "user@a.test", tag="a")
    s.wait_log(r"to=<user@a\.test>.*status=sent", timeout=60)
    c1 = connection_of(r, first)
    for i in range(b_attempts):
        time.sleep(1.5)
        world.send(s, "user%d@b.test" % i, tag="b")
        s.wait_log(r"to=<user\d@b\.test>.*status=deferred", count=i + 1, timeout=60)
    wait_for(lambda: disconnected(r, c1), 30, "c1 to close")

    recs = r.log_records()
    pid, start = c1
    closed_at = min(n for n in range(start, len(recs)) if recs[n][1] == pid
                    and recs[n][2].startswith("disconnect from "))
    b_connects = [n for n in range(start + 1, len(recs))
                  if recs[n][2].startswith("connect from ")]
    refusals = s.grep(REFUSED, ident="smtp")
    print("c1 closed at receiver record %d; b.test connects at %s; %d refusals"
          % (closed_at, b_connects, len(refusals)))
    assert len(b_connects) == b_attempts, r.log_tail(60)
    # The early b.test attempts found c1 and put it back ...
    assert refusals
    # ... but c1 did not outlive its cache period: the sender closed it
    # while b.test attempts kept coming, and the later ones found nothing.
    assert closed_at < b_connects[4], r.log_tail(80)
    assert len(refusals) < b_attempts
    assert len(s.grep(r"status=sent", ident="smtp")) == 1
