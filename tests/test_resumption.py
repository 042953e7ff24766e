"""TLS session resumption for the connections that must be new.

Connection reuse saves the handshake only while a connection is cached; a
delivery after that needs a new connection, and with a client session cache
(smtp_tls_session_cache_database, as Debian's default main.cf sets it) that
connection can resume an earlier TLS session instead of a full handshake.
With smtp_tls_connection_reuse = yes, tlsproxy(8) makes the new connections
and must use the same cache through tlsmgr(8).

Counted at the receiver: a Postfix smtpd at "smtpd_tls_loglevel = summary,
cache" logs "Reusing old session" for a resumed handshake (tls_server.c);
aiosmtpd reports "resumed" per handshake (Python's SSLObject.session_reused).

To make every delivery need a new connection, messages are spaced 2.5 s apart
and the sender keeps TLS connections for 1 s only
(smtp_tls_connection_cache_time_limit); the receiver sees one connection per
message.

Safety: a resumed session keeps the certificate verification result of the
handshake that created it (OpenSSL does not check the names again), so a
session made under one TLS policy must not be resumed under another.  The
last test changes the certificate match names of a destination's policy
(hash: table, no reload) and checks that the deliveries after the change are
deferred as unverified instead of riding the old session.
"""

import os
import re
import subprocess
import time

import pytest

from harness.base import POSTFIX_VERSION
from harness.world import wait_for

N = 11                  # messages; every one after the first may resume
SPACING = 2.5
ADDRESS = "127.0.0.10"
ROUTE = {"d1.test": "[%s]:25" % ADDRESS}
SESSION_CACHE = "btree:${data_directory}/smtp_scache"

# Receiver TLS set-ups: protocol and how the server resumes.
RECEIVERS = {
    # TLS 1.3 tickets, stateless (smtpd's default: no server cache).
    "tls13-tickets": {},
    # TLS 1.3 with a server-side cache and no stateless tickets: OpenSSL
    # issues stateful (single-use) tickets backed by the server cache.
    "tls13-server-cache": {
        "smtpd_tls_session_cache_database": "btree:${data_directory}/smtpd_scache",
        "tls_ssl_options": "NO_TICKET"},
    # TLS 1.2 RFC 5077 session tickets.
    "tls12-tickets": {"smtpd_tls_protocols": ">=TLSv1.2, <=TLSv1.2"},
    # TLS 1.2 session IDs, from the server's session cache.
    "tls12-session-ids": {
        "smtpd_tls_protocols": ">=TLSv1.2, <=TLSv1.2",
        "smtpd_tls_session_cache_database": "btree:${data_directory}/smtpd_scache",
        "tls_ssl_options": "NO_TICKET"},
}


def new_connection_sender(world, reuse=True, flavour="patched", level="encrypt",
                          cache=True, **main):
    """A sender whose spaced deliveries each need a new connection."""
    s = world.sender(ROUTE, reuse=reuse, flavour=flavour, level=level, tuned=False,
                     smtp_connection_cache_time_limit="1s", **main)
    if flavour == "patched":
        s.main["smtp_tls_connection_cache_time_limit"] = "1s"
    if cache:
        s.main["smtp_tls_session_cache_database"] = SESSION_CACHE
    return s


def send_spaced(world, s, r, n):
    ids = world.send(s, "user@d1.test", n=n, spacing=SPACING)
    wait_for(lambda: r.counts().messages >= n, 60, "%d messages at the receiver" % n)
    wait_for(lambda: len(s.grep(r"status=sent")) >= n, 30, "%d deliveries logged" % n)
    return ids


@pytest.mark.parametrize("receiver", sorted(RECEIVERS))
def test_new_connections_through_tlsproxy_resume(world, receiver):
    r = world.postfix_receiver("r1", [ADDRESS], **RECEIVERS[receiver])
    s = new_connection_sender(world)
    world.start()
    ids = send_spaced(world, s, r, N)
    c = r.counts()
    print("%s: %d connections, %d handshakes, %d resumed"
          % (receiver, c.connections, c.handshakes, c.resumed))
    assert sorted(r.accepted_ids()) == sorted(ids), "each message exactly once"
    assert c.plaintext_messages == 0
    # Every delivery made a new connection, through tlsproxy.
    assert (c.connections, c.handshakes) == (N, N), c
    assert s.conn_uses() == []
    assert len(s.grep(r"TLS connection established to %s" % ADDRESS,
                      ident="tlsproxy")) == N
    want = "TLSv1.3" if receiver.startswith("tls13") else "TLSv1.2"
    assert {p for p, _ in c.tls} == {want}, c.tls
    # The first is a full handshake; of the N - 1 after it at least 90 %
    # resume (the target; all of them did in every run so far).
    assert c.resumed >= 0.9 * (N - 1), c
    assert c.resumed <= N - 1, c


def test_new_connections_to_aiosmtpd_resume(world):
    """The same with another TLS server implementation (Python's ssl,
    stateless TLS 1.3 tickets)."""
    r = world.aio_receiver("aio", ADDRESS)
    s = new_connection_sender(world)
    world.start()
    ids = send_spaced(world, s, r, N)
    c = r.counts()
    print("aiosmtpd: %d connections, %d handshakes, %d resumed"
          % (c.connections, c.handshakes, c.resumed))
    assert sorted(r.message_ids()) == sorted(ids)
    assert (c.connections, c.handshakes, c.plaintext_messages) == (N, N, 0), c
    assert c.resumed >= 0.9 * (N - 1), c


def test_control_no_resumption_without_a_session_cache(world):
    """Negative control: the count above can fail.  Without
    smtp_tls_session_cache_database nothing is resumed: tlsproxy keeps no
    sessions of its own (the client SSL_CTX has no internal cache)."""
    r = world.postfix_receiver("r1", [ADDRESS])
    s = new_connection_sender(world, cache=False)
    world.start()
    send_spaced(world, s, r, 5)
    c = r.counts()
    assert (c.connections, c.handshakes, c.resumed) == (5, 5, 0), c


def write_policy(s, path, names):
    with open(path, "w") as f:
        f.write("[%s]:25 secure match=%s\n" % (ADDRESS, names))
    subprocess.run([s.cmd("postmap"), "-c", s.conf, "hash:" + path], check=True)
    # A table written less than ~2 s before use is "hot" (field notes).
    past = time.time() - 60
    os.utime(path + ".db", (past, past))


@pytest.mark.parametrize("flavour, reuse", [
    ("patched", True), ("patched", False), ("stock", False)],
    ids=["patched-reuse-on", "patched-reuse-off", "stock-reuse-off"])
def test_resumption_never_bypasses_new_match_names(world, request, flavour, reuse):
    """A session verified for match=mx-r1.test must not be resumed after the
    policy names other.test, which the certificate does not contain.
    Stock 3.10.13 and 3.12-20260821 (in-process TLS, session cache) resume
    it and deliver the mail as "Verified": the test runs there too and must
    fail (strict: documents the upstream defect, and an upstream fix would
    show as XPASS)."""
    if flavour == "stock":
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="upstream %s resumes the session verified "
            "for other names" % POSTFIX_VERSION))
    r = world.postfix_receiver("r1", [ADDRESS], cert=world.cert("mx-r1", ["mx-r1.test"]))
    s = new_connection_sender(world, reuse=reuse, flavour=flavour, level="secure",
                              default_destination_concurrency_failed_cohort_limit="100")
    policy = os.path.join(s.conf, "tls_policy")
    s.main["smtp_tls_policy_maps"] = "hash:" + policy
    s.prepare()
    write_policy(s, policy, "mx-r1.test")
    world.start()

    first = world.send(s, "user@d1.test")
    wait_for(lambda: r.counts().messages >= 1, 60, "the first message")
    wait_for(lambda: s.grep(r"status=sent"), 30, "its delivery logged")
    assert s.grep(r"^Verified TLS connection established to %s" % ADDRESS, ident="smtp")

    time.sleep(3)
    write_policy(s, policy, "other.test")
    # Each delivery needs a new connection (spacing > cache time), and its
    # session lookup must not find the session of the old policy.
    later = []
    for i in range(3):
        time.sleep(4)
        later += world.send(s, "user@d1.test")
    wait_for(lambda: len(s.grep(r"status=(deferred|sent)")) >= 4, 60,
             "4 delivery attempts logged")
    time.sleep(1)
    c = r.counts()
    print("%s reuse=%s: %s" % (flavour, reuse, c))
    deferred = s.grep(r"status=deferred \(Server certificate not verified\)")
    accepted = r.accepted_ids()
    assert accepted == first, "no message accepted after the names changed"
    # smtp(8) checks its tables before it accepts a delivery request
    # (pre_accept: "has changed -- restarting"), so all three run under
    # the new names: each is a new connection, none resumes the old
    # session, each fails verification.
    assert len(deferred) == 3, s.log_tail()
    assert len(s.grep(r"status=sent")) == 1


# -- many domains on one MX host (nexthop = domain) ------------------------

MX_ADDRESS = "127.0.1.130"


def mx_world(world, n, cert_names=None, **main):
    """n domains m01..mNN.plain.test with one MX host, mx.plain.test, a
    Postfix receiver whose certificate names cert_names (default: the MX
    host and every domain); the sender routes by MX (nexthop = domain)."""
    from harness.dns import UNSIGNED, dns_world
    dns = dns_world(world)
    mx = "mx." + UNSIGNED
    domains = ["m%02d.%s" % (i, UNSIGNED) for i in range(1, n + 1)]
    r = world.postfix_receiver("mx", [MX_ADDRESS], cert=world.cert(
        "mx-shared", cert_names or [mx] + domains))
    dns.host(mx, MX_ADDRESS)
    for d in domains:
        dns.mx(d, mx)
    s = world.sender({d: d for d in domains}, reuse=True, tuned=False,
                     smtp_connection_cache_time_limit="1s",
                     smtp_tls_connection_cache_time_limit="1s",
                     smtp_tls_session_cache_database=SESSION_CACHE, **main)
    dns.attach(s)
    return r, s, mx, domains


@pytest.mark.parametrize("policy", ["encrypt", "secure-fixed-names"])
def test_domains_on_one_mx_resume_each_others_sessions(world, policy):
    """Six domains, one MX host, two rounds of one message per domain, each
    over a new connection: all but the first resume.  Keyed by nexthop (as
    upstream), each domain's first connection was a full handshake (6 of
    12)."""
    kw = {"level": "encrypt"}
    if policy == "secure-fixed-names":
        kw = {"level": "secure", "smtp_tls_secure_cert_match": "mx.plain.test"}
    r, s, mx, domains = mx_world(world, 6, **kw)
    world.start()
    ids = []
    for rnd in range(2):
        for d in domains:
            if ids:
                time.sleep(SPACING)
            ids += world.send(s, "user%d@%s" % (rnd, d))
    n = len(ids)
    wait_for(lambda: r.counts().messages >= n, 60, "%d messages" % n)
    wait_for(lambda: len(s.grep(r"status=sent")) >= n, 30, "%d deliveries logged" % n)
    c = r.counts()
    print("%s: %d connections, %d handshakes, %d resumed"
          % (policy, c.connections, c.handshakes, c.resumed))
    assert sorted(r.accepted_ids()) == sorted(ids)
    assert (c.connections, c.handshakes, c.plaintext_messages) == (n, n, 0), c
    assert c.resumed >= 0.9 * (n - 1), c
    if policy.startswith("secure"):
        assert len(s.grep(r"^Verified TLS connection established to %s" % mx,
                          ident="smtp")) == n


def test_session_verified_for_one_domain_is_not_resumed_for_another(world):
    """Level secure, default match strategy (nexthop, dot-nexthop): the MX
    host's certificate names m01 but not m02.  m01's verified session with
    that host must not be resumed for m02 (which would then count as
    verified): m02 is deferred, every time."""
    from harness.dns import UNSIGNED
    r, s, mx, domains = mx_world(
        world, 2, cert_names=["mx." + UNSIGNED, "m01." + UNSIGNED], level="secure",
        default_destination_concurrency_failed_cohort_limit="100")
    world.start()
    first = world.send(s, "user@" + domains[0])
    wait_for(lambda: r.counts().messages >= 1, 60, "m01's message")
    for i in range(3):
        time.sleep(SPACING)
        world.send(s, "user%d@%s" % (i, domains[1]))
    wait_for(lambda: len(s.grep(r"status=deferred")) >= 3, 60, "3 m02 attempts")
    time.sleep(1)
    c = r.counts()
    print(c)
    assert r.accepted_ids() == first
    assert len(s.grep(r"to=<[^>]*@m02\.%s>.*status=deferred \(Server certificate "
                      r"not verified\)" % re.escape(UNSIGNED))) == 3
    assert not s.grep(r"to=<[^>]*@m02\..*status=sent")
