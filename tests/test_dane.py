"""DANE, DNSSEC and certificate checks through tlsproxy, with TLS reuse on.

The DNS is real (harness/dns.py): signed zones under the private TLD test.,
served by unbound on 127.0.2.x behind a validating unbound resolver, which
the sender's Postfix sees through a private mount namespace.  Mail is routed
by MX (transport "smtp:domain"), with smtp_dns_support_level = dnssec and
smtp_host_lookup = dns.  Receivers are Postfix instances on 127.0.1.x
presenting certificates from the test CA for their MX host names; every
count is taken at the receiver.

Reuse is checked with messages spaced 3 s apart: a burst would be reused by
qmgr's on-demand caching even if TLS reuse were broken.

The sender flavour is a parameter: TEST_FLAVOURS=stock,patched runs both
(default: patched only).
"""

import os
import re
import time

import pytest

from harness.dns import SIGNED, UNSIGNED, BOGUS, dns_world, tlsa_ee, tlsa_ta
from harness.world import wait_for

FLAVOURS = os.environ.get("TEST_FLAVOURS", "patched").split(",")
N = 5
SPACING = 3


@pytest.fixture(params=FLAVOURS)
def flavour(request):
    return request.param


# -- building blocks -----------------------------------------------------

def mx_host(world, dns, name, address, zone=SIGNED):
    """A Postfix receiver for MX host <name>.<zone> at address, with a test
    CA certificate for that name, and its A record."""
    host = "%s.%s" % (name, zone)
    r = world.postfix_receiver(name, [address], cert=world.cert(name, [host]))
    r.host, r.address = host, address
    dns.host(host, address)
    return r


def dns_sender(world, dns, flavour, domains, level, policy=None, **main):
    """A sender with reuse on that routes each domain by its MX records."""
    s = world.sender({d: d for d in domains}, reuse=True, level=level,
                     flavour=flavour, **main)
    if policy:
        s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", policy)
    dns.attach(s)
    return s


def tls_log(sender, kind, r):
    """The smtp(8) lines '<kind> TLS connection <established|reused> to r'."""
    return sender.grep(r"^%s TLS connection \w+ to %s\[%s\]:25:"
                       % (kind, re.escape(r.host), re.escape(r.address)), ident="smtp")


def sent_via(sender, r):
    """The smtp(8) 'status=sent' lines for deliveries to receiver r."""
    return sender.grep(r"relay=%s\[%s\]:25,.*status=sent"
                       % (re.escape(r.host), re.escape(r.address)), ident="smtp")


def deliver(world, s, r, rcpt, n, spacing=SPACING, before=0):
    """Send n messages spaced apart and wait until r has them all, and the
    sender has logged their delivery (the receiver logs a message before
    the sender logs status=sent)."""
    ids = world.send(s, rcpt, n=n, spacing=spacing)
    wait_for(lambda: r.counts().messages >= before + n, 30,
             "%d messages at %s\n%s" % (before + n, r.name, s.log_tail()))
    wait_for(lambda: len(sent_via(s, r)) >= before + n, 30,
             "%d deliveries to %s logged\n%s" % (before + n, r.name, s.log_tail()))
    wait_for(lambda: len(r.message_ids()) >= before + n, 30,
             "%d Message-IDs logged by %s" % (before + n, r.name))
    return ids


def wait_outcomes(s, n, timeout=30):
    """Wait until n deliveries were either sent or deferred; return both lists."""
    def outcomes():
        sent, deferred = s.grep(r"status=sent"), s.grep(r"status=deferred")
        return (sent, deferred) if len(sent) + len(deferred) >= n else None
    return wait_for(outcomes, timeout, "%d delivery outcomes\n%s" % (n, s.log_tail()))


def roll_tlsa(dns, host, *rdatas):
    """Publish a new TLSA RRset the way a domain owner would: re-sign, let
    the old answers expire from the resolver's cache (no flush), then wait
    out the smtp(8) process' own TLSA cache (at most TTL + 1 s)."""
    dns.tlsa(host, *rdatas)
    dns.commit(flush=False)
    name = "_25._tcp." + host
    wait_for(lambda: sorted(dns.query(name, "TLSA")[2]) == sorted(rdatas),
             dns.ttl + 10, "the resolver to serve the new TLSA RRset")
    time.sleep(dns.ttl + 2)


# -- the DNS world itself ------------------------------------------------

def test_dns_world(world, flavour):
    """The zones validate as designed, and the sender's Postfix sees the test
    resolver while the host's /etc/resolv.conf stays as it was."""
    with open("/etc/resolv.conf") as f:
        host_resolv = f.read()
    dns = dns_world(world)
    dns.host("mx1." + SIGNED, "127.0.1.10")
    dns.mx("d1." + SIGNED, "mx1." + SIGNED)
    dns.host("mx." + UNSIGNED, "127.0.1.11")
    dns.mx("d." + UNSIGNED, "mx." + UNSIGNED)
    dns.host("mx." + BOGUS, "127.0.1.12")
    dns.mx("d." + BOGUS, "mx." + BOGUS)
    s = dns_sender(world, dns, flavour, ["d1." + SIGNED], "dane")
    world.start()

    assert dns.query("d1." + SIGNED, "MX") == ("NOERROR", True, ["10 mx1.dane.test."])
    assert dns.query("mx1." + SIGNED, "A") == ("NOERROR", True, ["127.0.1.10"])
    assert dns.query("nothing." + SIGNED, "A")[:2] == ("NXDOMAIN", True)
    assert dns.query("d." + UNSIGNED, "MX") == ("NOERROR", False, ["10 mx.plain.test."])
    assert dns.query("d." + BOGUS, "MX")[0] == "SERVFAIL"
    assert dns.query("example.org", "A")[0] == "REFUSED"     # nothing leaves test.

    with open("/proc/%d/root/etc/resolv.conf" % s.master_pid()) as f:
        assert "nameserver 127.0.2.2" in f.read()
    with open("/etc/resolv.conf") as f:
        assert f.read() == host_resolv


# -- authenticated, and reused -------------------------------------------

CASES = {
    # name: (level, TLSA RRset for mx1 (function of world, cert), policy table)
    "dane-ee": ("dane", lambda w, c: [tlsa_ee(c)], None),
    "dane-ta": ("dane", lambda w, c: [tlsa_ta(w.ca)], None),
    "secure": ("secure", lambda w, c: [], {"d1." + SIGNED: "secure match=mx1." + SIGNED}),
    "verify": ("verify", lambda w, c: [], None),    # match = MX hostname, DNSSEC-validated
}


@pytest.mark.parametrize("case", list(CASES))
def test_verified_reused(world, flavour, case):
    """N spaced messages: all delivered over one verified TLS connection
    (1 connection, 1 handshake at the receiver), reused N-1 times."""
    level, tlsa, policy = CASES[case]
    dns = dns_world(world)
    r = mx_host(world, dns, "mx1", "127.0.1.10")
    dns.mx("d1." + SIGNED, r.host)
    dns.tlsa(r.host, *tlsa(world, world.cert("mx1")))
    s = dns_sender(world, dns, flavour, ["d1." + SIGNED], level, policy)
    world.start()

    ids = deliver(world, s, r, "user@d1." + SIGNED, N)
    c = r.counts()
    assert c.messages == N and c.plaintext_messages == 0, c
    assert sorted(r.message_ids()) == sorted(ids), "each message exactly once"
    assert (c.connections, c.handshakes) == (1, 1), c
    assert len(tls_log(s, "Verified", r)) == N, s.log_tail()
    assert len(s.grep(r"^Verified TLS connection established", ident="smtp")) == 1
    assert not s.grep(r"^(Trusted|Untrusted|Anonymous) TLS", ident="smtp")
    assert s.conn_uses() == list(range(2, N + 1))
    assert not s.grep(r"DNSSEC|TLSA", ident="smtp"), "no DNSSEC or TLSA warnings"


# -- not authenticated: deferred, nothing delivered, no plaintext --------

DEFERRALS = {
    # name: (level, zone, TLSA RRset of mx1 (function of world), policy table,
    #        reason logged, how smtp logs the handshake (None: no connection))
    "dane-wrong-tlsa": (
        "dane", SIGNED, lambda w: [tlsa_ee(w.cert("impostor", ["mx1." + SIGNED]))],
        None, "Server certificate not verified", "Untrusted"),
    "dane-ta-wrong-ta": (
        "dane", SIGNED, lambda w: ["2 1 1 " + w.cert("impostor", ["mx1." + SIGNED])
                                   .spki_sha256()],
        None, "Server certificate not verified", "Untrusted"),
    "dane-only-unsigned-zone": (
        "dane-only", UNSIGNED, lambda w: [tlsa_ee(w.cert("mx1"))],
        None, "non DNSSEC destination", None),
    "dane-bogus-zone": (
        "dane", BOGUS, lambda w: [tlsa_ee(w.cert("mx1"))],
        None, "Host or domain name not found. Name service error for "
        "name=d1.bogus.test type=MX: Host not found, try again", None),
    "dane-only-bogus-zone": (
        "dane-only", BOGUS, lambda w: [tlsa_ee(w.cert("mx1"))],
        None, "Host or domain name not found. Name service error for "
        "name=d1.bogus.test type=MX: Host not found, try again", None),
    "secure-wrong-name": (
        "secure", SIGNED, lambda w: [],
        {"d1." + SIGNED: "secure match=other." + SIGNED},
        "Server certificate not verified", "Trusted"),
    "verify-wrong-name": (
        "verify", SIGNED, lambda w: [],
        {"d1." + SIGNED: "verify match=other." + SIGNED},
        "Server certificate not verified", "Trusted"),
}


@pytest.mark.parametrize("case", list(DEFERRALS))
def test_deferred(world, flavour, case):
    """Mail that cannot be authenticated stays queued: nothing reaches the
    receiver, neither over TLS nor in plaintext.  Where smtp gets as far as
    a handshake, it is logged as not verified: with DANE the test CA in
    smtp_tls_CAfile does not count ("Untrusted"); with secure/verify the
    chain is trusted but the name does not match ("Trusted")."""
    level, zone, tlsa, policy, reason, handshake = DEFERRALS[case]
    n = 3
    dns = dns_world(world)
    r = mx_host(world, dns, "mx1", "127.0.1.10", zone=zone)
    dns.mx("d1." + zone, r.host)
    dns.tlsa(r.host, *tlsa(world))
    s = dns_sender(world, dns, flavour, ["d1." + zone], level, policy)
    world.start()

    world.send(s, "user@d1." + zone, n=n)
    sent, deferred = wait_outcomes(s, n)
    assert not sent, sent
    assert all("status=deferred (%s" % reason in t for t in deferred), deferred
    c = r.counts()
    assert c.messages == 0 and c.plaintext_messages == 0, c
    assert len(s.queued()) == n
    if handshake:
        assert c.connections > 0, c
        assert tls_log(s, handshake, r), s.log_tail()
        assert not s.grep(r"^Verified TLS", ident="smtp")
    else:
        assert c.connections == 0, c


def test_unsigned_falls_back_to_may(world, flavour):
    """dane with an insecure (unsigned) MX: upstream's documented fallback
    is opportunistic TLS ("may"): TLSA records in the unsigned zone are
    ignored, mail is delivered over TLS without authentication (smtp logs
    "Trusted", the chain verifies against smtp_tls_CAfile but no name or
    TLSA is matched), and the connection is still reused."""
    n = 3
    dns = dns_world(world)
    r = mx_host(world, dns, "mx", "127.0.1.11", zone=UNSIGNED)
    dns.mx("d." + UNSIGNED, r.host)
    dns.tlsa(r.host, tlsa_ee(world.cert("impostor", [r.host])))     # ignored
    s = dns_sender(world, dns, flavour, ["d." + UNSIGNED], "dane")
    world.start()

    ids = deliver(world, s, r, "user@d." + UNSIGNED, n)
    c = r.counts()
    assert sorted(r.message_ids()) == sorted(ids)
    assert c.messages == n and c.plaintext_messages == 0, c
    assert (c.connections, c.handshakes) == (1, 1), c
    assert len(tls_log(s, "Trusted", r)) == n, s.log_tail()
    assert not s.grep(r"^Verified TLS", ident="smtp")


# -- TLSA rollover while a connection is cached --------------------------

def test_rollover_still_matches(world, flavour):
    """The domain owner replaces DANE-EE with DANE-TA; the server matches
    both.  Delivery goes on, verified, before and after the rollover.  (How
    is not asserted: stock reuses the cached connection without looking at
    the new RRset; a new handshake checked against it is just as right.)"""
    dns = dns_world(world)
    r = mx_host(world, dns, "mx1", "127.0.1.10")
    dns.mx("d1." + SIGNED, r.host)
    dns.tlsa(r.host, tlsa_ee(world.cert("mx1")))
    s = dns_sender(world, dns, flavour, ["d1." + SIGNED], "dane")
    world.start()

    deliver(world, s, r, "user@d1." + SIGNED, 2)
    roll_tlsa(dns, r.host, tlsa_ta(world.ca))
    deliver(world, s, r, "user@d1." + SIGNED, 2, before=2)
    assert not s.grep(r"status=deferred")
    assert len(tls_log(s, "Verified", r)) == 4
    assert r.counts().plaintext_messages == 0


# How long the sender keeps the connection: far longer than the rollover
# takes (first answers expire, the resolver serves the new RRset, the smtp
# process' TLSA cache expires: about 6-8 s), for both flavours: stock's
# smtp_connection_cache_time_limit and the patched
# smtp_tls_connection_cache_time_limit (8 s by default), and scache's cap.
ROLLOVER_CACHE = 60


@pytest.mark.parametrize("reuse", [False, True], ids=["reuse-off", "reuse-on"])
@pytest.mark.parametrize("flavour", ["patched", "stock"])
def test_rollover_no_longer_matches(world, flavour, reuse):
    """The TLSA RRset changes to a key the server does not have (a rollover
    published wrong, or the old key revoked).  Once the old RRset's TTL has
    passed, the next delivery must be authenticated against the new RRset,
    so it must be deferred.  With reuse off this is the control showing that
    the new RRset is in force by then.

    With reuse on, the connection verified against the old RRset is still
    cached when the third message comes: the receiver has not closed it
    (smtpd_timeout 300 s) and the sender keeps it for ROLLOVER_CACHE s.
    Both flavours run whatever TEST_FLAVOURS says.  Stock upstream rides
    it: the endpoint cache key (service, nexthop, address, port, level)
    holds no TLSA data and smtp_reuse_addr() does not check the cached peer
    against the current RRset, so the message is delivered ("Verified TLS
    connection reused") for as long as the connection stays cached; that is
    asserted, so that this test shows the difference.  The patched sender
    does not use it, makes a new connection and defers the message."""
    dns = dns_world(world)
    r = mx_host(world, dns, "mx1", "127.0.1.10")
    dns.mx("d1." + SIGNED, r.host)
    dns.tlsa(r.host, tlsa_ee(world.cert("mx1")))
    s = dns_sender(world, dns, flavour, ["d1." + SIGNED], "dane",
                   cache_time=ROLLOVER_CACHE)
    if flavour == "patched":
        s.main["smtp_tls_connection_cache_time_limit"] = "%ds" % ROLLOVER_CACHE
    if not reuse:
        s.main["smtp_tls_connection_reuse"] = "no"
        s.main["smtp_connection_cache_destinations"] = ""
    world.start()

    deliver(world, s, r, "user@d1." + SIGNED, 2)
    assert r.counts().handshakes == (1 if reuse else 2)
    first = r.connections()[0]
    started = time.time()
    roll_tlsa(dns, r.host, tlsa_ee(world.cert("impostor", [r.host])))
    world.send(s, "user@d1." + SIGNED)
    sent, deferred = wait_outcomes(s, 3)
    wait_for(lambda: len(r.connections()) >= (2 if reuse and flavour == "patched" else 1),
             30, "the receiver's connections")
    conns = r.connections()
    print("%s: third attempt %.1f s after the rollover began; receiver connections %s"
          % (flavour, time.time() - started,
             [(c["pid"], c["connect"], c["disconnected"], len(c["messages"])) for c in conns]))
    if reuse and flavour == "stock":
        # Provably cached when the third message came: only the sender's
        # scache holds the first connection between deliveries (closing it
        # there makes tlsproxy close the TCP connection), and the receiver
        # has not seen it closed, not even after the third attempt.
        assert conns[0]["connect"] == first["connect"] and not conns[0]["disconnected"], \
            r.log_tail()
    elif reuse:
        # Provably cached when the third message came: the patched sender
        # found it there, did not use it, and closed it before it made the
        # new connection (one connection to the server at a time).
        assert conns[0]["connect"] == first["connect"] and conns[0]["disconnected"], \
            r.log_tail()
        assert s.grep(r"closed an idle cached TLS connection that was made under "
                      r"a different TLS policy"), s.log_tail()
    if reuse and flavour == "stock":
        assert len(sent) == 3 and not deferred, s.log_tail()
        assert r.counts().messages == 3
        assert len(conns[0]["messages"]) == 3 and len(conns) == 1, \
            "stock rode the connection verified against the old RRset"
        assert s.grep(r"to=<user@d1\.%s>.*conn_use=3.*status=sent" % re.escape(SIGNED))
        return
    assert r.counts().messages == 2, "delivered to a server the TLSA RRset no longer names"
    assert len(sent) == 2 and len(deferred) == 1
    assert "Server certificate not verified" in deferred[0]
    if reuse:
        # A new connection, checked against the new RRset; the old one
        # carried the first two messages only.
        assert r.counts().handshakes == 2 and len(conns[0]["messages"]) == 2


# -- MX preference and fallback -------------------------------------------

@pytest.mark.parametrize("level", ["dane", "secure"])
def test_mx_fallback(world, flavour, level):
    """Primary and secondary MX, both authenticated (DANE-EE, or secure with
    both names).  While the primary is up it gets all the mail over one
    connection; once it is down the secondary gets the rest, again over one
    connection."""
    n = 4
    dns = dns_world(world)
    mx1 = mx_host(world, dns, "mx1", "127.0.1.21")
    mx2 = mx_host(world, dns, "mx2", "127.0.1.22")
    dns.mx("d1." + SIGNED, (10, mx1.host), (20, mx2.host))
    policy = None
    if level == "dane":
        for r in (mx1, mx2):
            dns.tlsa(r.host, tlsa_ee(world.cert(r.name)))
    else:
        policy = {"d1." + SIGNED: "secure match=%s:%s" % (mx1.host, mx2.host)}
    s = dns_sender(world, dns, flavour, ["d1." + SIGNED], level, policy)
    world.start()

    deliver(world, s, mx1, "user@d1." + SIGNED, n)
    assert mx2.counts().connections == 0
    mx1.stop()
    deliver(world, s, mx2, "user@d1." + SIGNED, n)
    c1, c2 = mx1.counts(), mx2.counts()
    assert (c1.messages, c1.connections, c1.handshakes) == (n, 1, 1), c1
    assert (c2.messages, c2.connections, c2.handshakes) == (n, 1, 1), c2
    assert c1.plaintext_messages == c2.plaintext_messages == 0
    assert len(sent_via(s, mx1)) == len(sent_via(s, mx2)) == n
    # One verified handshake per MX.  (Upstream also logs "Verified TLS
    # connection reused" for the dead cached connection to mx1 just before
    # its RSET probe fails, so "reused" lines are not counted here.)
    for r in (mx1, mx2):
        assert len(tls_log(s, "Verified", r)) >= n
        assert len([t for t in tls_log(s, "Verified", r) if " established " in t]) == 1
    assert not s.grep(r"^(Trusted|Untrusted|Anonymous) TLS", ident="smtp")
    assert not s.grep(r"status=deferred")
