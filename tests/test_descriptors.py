"""Descriptor exhaustion in scache(8) and the multi-connection server skeletons.

Issue 13, item 5.  With TLS connection reuse, scache(8) holds one
descriptor for every cached proxied connection, plus one for every smtp(8)
process that talks to it.  multi_server(3), its skeleton, terminated the
process when it could not move a new client descriptor above
THRESHOLD_FD_WORKAROUND (128): "fatal: fcntl F_DUPFD".  These tests run
the sender's scache (or tlsproxy) through a wrapper that lowers its open
file limit (ulimit -n), deliver to many receiver addresses (127.0.0.x) at
once and then spaced, and count the messages at the receiver: every
message accepted exactly once, nothing in plaintext, no fatal error or
panic in scache, smtp or tlsproxy, and a warning that names the problem.

The second test checks the other half of the change: with a limit above
128, the descriptors below 128 stay reserved for libraries (upstream's
THRESHOLD_FD_WORKAROUND): a client is never served on one of them (the
servers run with -v, which logs "connection established fd N").
"""

import re
import smtplib
import time

import pytest

from harness import mailgen
from harness.world import wait_for

N = 40                                   # receiver addresses and domains
ADDRS = ["127.0.0.%d" % (100 + i) for i in range(N)]
DOMAINS = ["fd%02d.test" % i for i in range(N)]
FAST = {
    "minimal_backoff_time": "3s", "maximal_backoff_time": "5s",
    "queue_run_delay": "3s",
    "smtp_connect_timeout": "5s", "smtp_helo_timeout": "5s",
    "smtp_starttls_timeout": "5s",
}


def world_with_limit(world, daemon, limit, flavour="patched", verbose=False,
                     cache_time=30):
    """One receiver on N addresses, a sender with reuse on that routes
    domain i to address i, and the sender's daemon (scache or tlsproxy)
    run under "ulimit -n limit"."""
    r = world.postfix_receiver("r1", ADDRS)
    s = world.sender({d: "[%s]:25" % a for d, a in zip(DOMAINS, ADDRS)},
                     reuse=True, flavour=flavour, cache_time=cache_time,
                     default_destination_concurrency_limit="20",
                     **FAST)
    if verbose and daemon == "scache":
        # The default master.cf line, as another service, with -v.
        s.add_service("vscache unix - - n - 1 scache -v")
        s.main["connection_cache_service_name"] = "vscache"
    elif verbose:
        s.add_service("vtlsproxy unix - - n - 0 tlsproxy -v")
        s.main["tlsproxy_service_name"] = "vtlsproxy"
    s.wrap_daemons({daemon: 'ulimit -n %d\nexec -a "$0" "$REAL" "$@"' % limit})
    return r, s


def inject_wave(s, tag):
    """One message to every domain, back to back (parallel deliveries)."""
    ids = []
    with smtplib.SMTP("127.0.0.1", s.inject_port, timeout=60) as smtp:
        for k, d in enumerate(DOMAINS):
            rcpt = "user%d@%s" % (k, d)
            msgid, data = mailgen.simple(rcpt, tag, k)
            smtp.sendmail("tester@sender.test", [rcpt], data)
            ids.append(msgid)
    return ids


def deliver_waves(s, r, waves=3, spacing=4, timeout=180):
    """waves of N messages, spacing seconds apart; wait until every one is
    accepted and the queue is empty; check exactly-once and no plaintext."""
    ids = []
    for w in range(waves):
        if w:
            time.sleep(spacing)
        ids += inject_wave(s, "fd-wave%d" % w)
    wait_for(lambda: set(ids) <= set(r.accepted_ids()) and not s.queued(),
             timeout, "every message accepted and the queue empty\n"
             + s.log_tail(40))
    time.sleep(1)                       # a late duplicate would show now
    got = r.accepted_ids()
    assert set(got) == set(ids), "foreign or missing messages"
    assert len(got) == len(ids), "duplicates: %d" % (len(got) - len(ids))
    assert r.counts().plaintext_messages == 0
    return ids


def no_crash(s):
    for ident in ("scache", "smtp", "tlsproxy"):
        bad = s.grep(r"fatal|panic", ident=ident)
        assert not bad, "%s: %s" % (ident, bad[:3])
    died = s.grep(r"(scache|smtp|tlsproxy) pid \d+ (exit status|killed)",
                  ident="master")
    assert not died, died[:3]


@pytest.mark.parametrize("flavour", ["patched", "stock"])
def test_scache_descriptor_exhaustion(world, flavour):
    """scache under "ulimit -n 40": room for about 30 descriptors, fewer
    than the 40 connections that three waves of one message to each of
    40 addresses leave cached.  scache keeps running: a connection that it
    cannot keep is closed and reported as not saved (smtp then closes it;
    the message was delivered already), and a client that it cannot accept
    waits; every message is delivered exactly once.  (Stock and the series
    before this change: scache terminates on its first client, "fatal:
    fcntl F_DUPFD: Invalid argument"; smtp then stops caching.)"""
    r, s = world_with_limit(world, "scache", 40, flavour=flavour)
    world.start()
    if flavour == "stock":
        world.send(s, "user@%s" % DOMAINS[0], n=1)
        s.wait_log(r"fatal: fcntl F_DUPFD: Invalid argument", ident="scache",
                   timeout=60)
        return
    deliver_waves(s, r)
    no_crash(s)
    warnings = s.grep(r"warning: .*(Too many open files|F_DUPFD|"
                      r"unable to receive file descriptor)", ident="scache")
    assert warnings, s.log_tail(40)
    print("\n".join(sorted(set(re.sub(r"\d+", "N", w) for w in warnings))))
    # Caching went on: connections were reused despite the limit.
    assert s.conn_uses(), "no connection was reused"


@pytest.mark.parametrize("daemon", ["scache", "tlsproxy"])
def test_low_descriptors_stay_reserved(world, daemon):
    """With "ulimit -n 136" there are 8 descriptors above 127, far fewer
    than the clients of 40 parallel deliveries (also when the master
    spreads them over several tlsproxy processes).  The server never serves a
    client on a descriptor below 128 (reserved for libraries), warns, and
    every message is still delivered exactly once."""
    r, s = world_with_limit(world, daemon, 136, verbose=True, cache_time=10)
    world.start()
    deliver_waves(s, r, waves=2, timeout=240)
    no_crash(s)
    fds = [int(m) for t in s.grep(r"connection established fd \d+", ident=daemon)
           for m in re.findall(r"fd (\d+)", t)]
    assert fds, "no client connection logged"
    low = sorted(fd for fd in fds if fd < 128)
    assert not low, "clients on reserved descriptors: %s" % low
    # The reservation was put to the test: something was refused.
    assert s.grep(r"warning: .*(reserved for libraries|Too many open files)",
                  ident=daemon), s.log_tail(40)
