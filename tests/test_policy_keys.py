"""Policy-exact TLS connection reuse: a delivery never rides a connection
that was negotiated under a different TLS policy, and equivalent policies
share connections across nexthops.

Two nexthops name the same receiver address, "[127.0.0.13]" and
"[127.0.0.13]:25", so that smtp_tls_policy_maps can give them different
policies (the policy lookup key is the nexthop string).  A message for the
"weak" nexthop is delivered first; 2 s later, while that connection is
cached, a message for the "strict" nexthop follows.  The receiver's log
tells whether the strict message arrived and over which connection.

Each pair runs on stock 3.10.13 too; the closing note lists which pairs
upstream gets wrong.  Stock expectations are asserted, so that the test
shows the difference and fails if either build changes behaviour.
"""

import time

import pytest

from harness.base import POSTFIX_VERSION
from harness.pki import TestCA
from harness.world import wait_for

ADDR = "127.0.0.13"
WEAK = "[%s]" % ADDR
STRICT = "[%s]:25" % ADDR

# The receiver offers TLS 1.2 only, with AES256 suites only.
NARROW_SERVER = {"smtpd_tls_protocols": "<=TLSv1.2",
                 "smtpd_tls_exclude_ciphers": "AES128, CHACHA20, ARIA, CAMELLIA"}


def fingerprint_of(cert):
    return cert.fingerprint("sha256")


# (id, weak policy, strict policy, receiver settings, strict deliverable?)
PAIRS = [
    ("protocols", "encrypt", "encrypt protocols=>=TLSv1.3", NARROW_SERVER, False),
    ("exclude", "encrypt", "encrypt exclude=AES256", NARROW_SERVER, False),
    ("match-names", "secure match=mx-r1.test", "secure match=other.test", {}, False),
    ("trust-anchor", "secure match=mx-r1.test",
     "secure match=mx-r1.test tafile={other_ca}", {}, False),
    ("fingerprint", "encrypt", "fingerprint match={wrong_fp}", {}, False),
    ("level", "may", "secure match=other.test", {}, False),
    ("servername", "encrypt", "encrypt servername=sni.test", {}, True),
    ("ciphers", "encrypt ciphers=medium", "encrypt ciphers=high exclude=AES128", {}, True),
]

# What stock 3.10.13 does with the strict message: "rides" the weak
# connection (the bug), or gets a "separate" connection.
STOCK = {"protocols": "rides", "exclude": "rides", "servername": "rides",
         "ciphers": "rides", "match-names": "separate", "trust-anchor": "separate",
         "fingerprint": "separate", "level": "separate"}

# The policy property that the patched client names when it does not reuse
# the weak connection (None: any property).
DIFFERS = {"protocols": "protocols", "exclude": "cipher_exclusions",
           "trust-anchor": None, "fingerprint": "level",
           "level": "level", "servername": "sni", "ciphers": "cipher_grade"}

# Pairs whose policies differ only in certificate match names share a lookup
# key (at the verify and secure levels the names are checked against the
# cached connection's certificate instead): the patched client finds the
# weak connection, refuses it for this reason, and leaves it cached.
REFUSED = {"match-names": "server certificate name"}


def receiver_connection_of(r, msgid):
    """The receiver connection that accepted a message: its smtpd pid and
    the log position of that smtpd's "connect from" (one smtpd process
    serves connections one after another, so the pid alone does not name
    a connection), or None."""
    c = r.connection_of(msgid)
    return c and (c["pid"], c["connect"])


@pytest.mark.parametrize("flavour", ["patched", "stock"])
@pytest.mark.parametrize("pair", PAIRS, ids=[p[0] for p in PAIRS])
def test_strict_policy_never_rides_weaker_connection(world, pair, flavour):
    name, weak, strict, server, deliverable = pair
    other_ca = TestCA(world.dir + "/other-ca", name="Other CA")
    cert = world.cert("mx-r1")
    weak = weak.format(other_ca=other_ca.cert, wrong_fp="00:" * 31 + "00")
    strict = strict.format(other_ca=other_ca.cert, wrong_fp="11:" * 31 + "11")
    r = world.postfix_receiver("r1", [ADDR], cert=cert, **server)
    s = world.sender({"weak.test": WEAK, "strict.test": STRICT}, reuse=True,
                     flavour=flavour, default_destination_concurrency_failed_cohort_limit=10)
    s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {
        WEAK: weak, STRICT: strict})
    world.start()

    [weak_id] = world.send(s, "user@weak.test", tag="weak")
    wait_for(lambda: receiver_connection_of(r, weak_id), 30, "the weak message")
    time.sleep(2)
    [strict_id] = world.send(s, "user@strict.test", tag="strict")
    [result] = s.wait_log(r"to=<user@strict\.test>.*status=(sent|deferred)", timeout=30)
    if "status=sent" in result:
        # The sender logs status=sent after the receiver's "250 queued",
        # which can come before the receiver's qmgr logs the message.
        wait_for(lambda: receiver_connection_of(r, strict_id), 30, "the strict message")

    arrived = strict_id in r.accepted_ids()
    same_conn = arrived and (receiver_connection_of(r, strict_id)
                             == receiver_connection_of(r, weak_id))
    if flavour == "stock":
        if STOCK[name] == "rides":
            assert arrived and same_conn, "stock reuses the weak connection"
        else:
            assert not same_conn
            assert arrived == deliverable
        return
    assert not same_conn, "strict mail rode a connection made for %r" % weak
    assert arrived == deliverable, s.log_tail()
    if name in REFUSED:
        why = s.grep(r"^127\.0\.0\.13\[127\.0\.0\.13\]:25: not reusing cached "
                     r"connection: %s does not satisfy the TLS policy$" % REFUSED[name])
        assert why, "no diagnostic for the refused connection\n" + s.log_tail()
        # Refused, not closed: the next message for the weak nexthop
        # rides the connection that the weak message came over.
        [again_id] = world.send(s, "user@weak.test", tag="weak-again")
        wait_for(lambda: receiver_connection_of(r, again_id), 30,
                 "the second weak message\n" + s.log_tail())
        assert receiver_connection_of(r, again_id) == receiver_connection_of(r, weak_id), \
            "the refused connection was closed\n" + r.log_tail() + s.log_tail()
        s.wait_log(r"to=<user@weak\.test>.*conn_use=2.*status=sent", timeout=30)
    else:
        why = s.grep(r"^127\.0\.0\.13\[127\.0\.0\.13\]:25: not reusing a connection "
                     r"that may be cached for a different TLS policy: (\S+) differs$")
        assert why, "no diagnostic for the policy difference\n" + s.log_tail()
        if DIFFERS[name]:
            assert why[0].endswith(": %s differs" % DIFFERS[name]), why
    if not deliverable:
        assert s.grep(r"to=<user@strict\.test>.*status=deferred")
    assert r.counts().plaintext_messages == 0


@pytest.mark.parametrize("flavour", ["patched", "stock"])
def test_equivalent_policies_share_across_nexthops(world, flavour):
    """Two nexthops for one receiver with the same 'secure' policy (fixed
    match name): the patched client shares one connection; stock keys
    certificate-checking levels by nexthop and makes one per nexthop."""
    n = 6
    r = world.postfix_receiver("r1", [ADDR], cert=world.cert("mx-r1"))
    s = world.sender({"a.test": WEAK, "b.test": STRICT}, reuse=True, flavour=flavour)
    policy = "secure match=mx-r1.test"
    s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {
        WEAK: policy, STRICT: policy})
    world.start()
    for i in range(n):
        if i:
            time.sleep(2)
        world.send(s, "user@%s" % ("a.test" if i % 2 == 0 else "b.test"))
    wait_for(lambda: r.counts().messages >= n, 60, "%d messages" % n)
    c = r.counts()
    assert c.messages == n and c.plaintext_messages == 0
    assert len(s.grep(r"^Verified TLS connection established")) >= 1
    assert c.handshakes == (1 if flavour == "patched" else 2), c
    assert not s.grep(r"not reusing")


class LookupCounter:
    """A tcp_table(5) server that answers every query with a fixed value
    and counts the queries."""

    def __init__(self, value):
        import socketserver
        import threading
        counter = self
        self.queries = []

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                for line in self.rfile:
                    key = line.decode().strip()
                    counter.queries.append(key)
                    self.wfile.write(b"200 %s\n" % value.encode())
                    self.wfile.flush()

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.running = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.skipif(POSTFIX_VERSION.startswith("3.10"),
                    reason="smtp_tls_loglevel_maps arrived in Postfix 3.11: "
                    "not part of the %s base" % POSTFIX_VERSION)
@pytest.mark.parametrize("reuse", [True, False], ids=["reuse-on", "reuse-off"])
def test_log_level_maps_not_queried_for_cache_lookup_keys(world, reuse):
    """smtp_tls_loglevel_maps sets the TLS log level of a handshake; the log
    level is not part of the TLS policy, so computing the connection cache
    lookup keys of a delivery does not query it.  Five messages 2 s apart
    over one connection: the map is queried once, for the one handshake,
    not for each delivery, and its log level still takes effect."""
    n = 5
    maps = LookupCounter("2")
    world.things.append(maps)
    r = world.postfix_receiver("r1", [ADDR], cert=world.cert("mx-r1"))
    s = world.sender({"a.test": WEAK}, reuse=reuse,
                     smtp_tls_loglevel_maps="tcp:127.0.0.1:%d" % maps.port)
    world.start()
    world.send(s, "user@a.test", n=n, spacing=2)
    wait_for(lambda: r.counts().messages >= n, 60, "%d messages" % n)
    c = r.counts()
    # Reuse off: the in-process engine, one handshake per message.
    assert c.handshakes == (1 if reuse else n), c
    assert s.grep(r"SSL_connect:"), "smtp_tls_loglevel_maps did not take effect"
    # One query per handshake (the table answers the first key, the
    # hostname): not per delivery, and not again for an in-process
    # handshake that a proxied one does not make.
    assert len(maps.queries) == c.handshakes, maps.queries


# A weaker policy ("may", "encrypt") may use a connection that was made under
# a stronger one, when the two have the same ciphers, exclusions, SNI and
# client certificate, and the TLS session meets the weaker policy; never the
# other way.  (id, strong policy, weak policy, the weak message rides the
# strong connection?)  The receiver negotiates TLS 1.3 by default.
STRONGER = [
    ("secure-may", "secure match=mx-r1.test", "may", True),
    ("verify-may", "verify match=mx-r1.test", "may", True),
    ("verify-encrypt", "verify match=mx-r1.test", "encrypt", True),
    ("fingerprint-may", "fingerprint match={fp}", "may", True),
    ("encrypt-may", "encrypt", "may", True),
    ("protocols", "secure match=mx-r1.test", "may protocols=<=TLSv1.2", False),
    ("ciphers", "secure match=mx-r1.test ciphers=high", "may", False),
    ("exclude", "secure match=mx-r1.test exclude=AES256", "may", False),
    ("servername", "secure match=mx-r1.test servername=mx-r1.test", "may", False),
    ("servername-same", "secure match=mx-r1.test servername=mx-r1.test",
     "may servername=mx-r1.test", True),
]


# Strong first, every pair; weak first, the pairs whose weak message rides
# (the others differ in what both directions need in common).
STRONGER_RUNS = ([(p, "strong-first") for p in STRONGER]
                 + [(p, "weak-first") for p in STRONGER if p[3]])


@pytest.mark.parametrize("pair,order", STRONGER_RUNS,
                         ids=["%s-%s" % (p[0], o) for p, o in STRONGER_RUNS])
def test_weaker_policy_rides_stronger_connection(world, pair, order):
    """Three messages 2 s apart, the first and the last under the same
    policy.  Strong first: the weak message rides the strong connection
    when the table says so, and the connection then goes back to the
    strong policy, whose last message finds it.  Weak first: the strong
    message never rides the weak connection.  A policy that makes a new
    connection first closes the other policy's idle one (one connection to
    the server at a time, as without reuse)."""
    name, strong, weak, rides = pair
    cert = world.cert("mx-r1")
    strong = strong.format(fp=cert.fingerprint("sha256"))
    r = world.postfix_receiver("r1", [ADDR], cert=cert)
    s = world.sender({"weak.test": WEAK, "strict.test": STRICT}, reuse=True,
                     default_destination_concurrency_failed_cohort_limit=10)
    s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {
        WEAK: weak, STRICT: strong})
    world.start()

    first, second = ("strict", "weak") if order == "strong-first" else ("weak", "strict")
    ids = []
    for i, kind in enumerate([first, second, first]):
        if i:
            time.sleep(2)
        [msgid] = world.send(s, "user@%s.test" % kind, tag="%s-%d" % (kind, i))
        wait_for(lambda: receiver_connection_of(r, msgid), 30,
                 "message %d (%s)\n%s" % (i, kind, s.log_tail()))
        ids.append(msgid)
    conns = [receiver_connection_of(r, m) for m in ids]
    c = r.counts()
    assert c.messages == 3 and c.plaintext_messages == 0, c
    if order == "strong-first" and rides:
        # The weak message rode the strong connection, which went back to
        # the strong policy: its third message found it.
        assert conns[1] == conns[0], "the weak message did not ride\n" + s.log_tail()
        assert conns[2] == conns[0], "the strict connection was not kept\n" + s.log_tail()
        assert c.handshakes == 1, c
        s.wait_log(r"to=<user@strict\.test>.*conn_use=3.*status=sent", timeout=30)
    else:
        assert conns[1] != conns[0], "%s rode %s's connection" % (second, first)
        # Before the second policy made its own connection, smtp(8) closed
        # the idle connection of the first (at most one connection to the
        # server at a time, as without reuse).  Weak first: the third (weak)
        # message rides the strong connection.  Strong first, no riding: the
        # third (strong) message makes a new connection.
        assert s.grep(r"closed an idle cached TLS connection"), s.log_tail()
        if order == "weak-first":
            assert conns[2] == conns[1], "the weak message did not ride\n" + s.log_tail()
            assert c.handshakes == 2, c
        else:
            assert conns[2] not in conns[:2], s.log_tail()
            assert c.handshakes == 3, c
    assert not s.grep(r"warning|panic|fatal"), s.log_tail()
