"""Twenty domains, one MX host, one "secure" policy: one TLS connection.

Issue 4: deliveries whose TLS policies are the same, or differ only in
certificate match names that the server certificate satisfies, share a
cached connection; a delivery whose names the certificate does not match
never rides it.

The world: real DNS (harness/dns.py), twenty domains d01..d20 in the zone
plain.test, each with "MX 10 mx.plain.test", and that host a Postfix
receiver on 127.0.1.120 with a test CA certificate for mx.plain.test and
d01..d20.plain.test (a hosting provider's multi-name certificate).  A
twenty-first domain, d21.plain.test, has the same MX but is not in the
certificate.  The sender has smtp_tls_security_level = secure, the test CA
as smtp_tls_CAfile, TLS reuse on, and a connection cache time of 30 s for
both flavours (stock's 2 s TTL cap would otherwise decide its count).

Two policies:

  same-names   smtp_tls_policy_maps gives d01..d20 "secure
               match=mx.plain.test": the same policy, word for word; d21
               has no entry and gets the default match strategy.
  domain-names the default "secure" match strategy (nexthop, dot-nexthop):
               every domain requires its own name, which the certificate
               has.

Mail: two rounds over d01..d20, one message per second (spaced: each
domain is a separate queue, and nothing arrives in a burst), with one
message for d21 in the middle of the first round.  Counted at the
receiver: TLS handshakes, connections, Message-IDs of accepted messages.

Expected: patched, 1 handshake for the 40 deliveries, plus one per
delivery attempt for d21 (which finds the shared connection, refuses it
because the certificate does not match d21, puts it back, makes its own
connection, fails verification and is deferred).  Stock keys secure
connections by nexthop domain: 20 handshakes, plus d21's.
"""

import re
import time

import pytest

from harness.dns import UNSIGNED, dns_world
from harness.world import wait_for

FLAVOURS = ["stock", "patched"]
DOMAINS = ["d%02d.%s" % (i, UNSIGNED) for i in range(1, 21)]
OUTSIDER = "d21." + UNSIGNED
MX = "mx." + UNSIGNED
ADDRESS = "127.0.1.120"
SPACING = 1
POLICIES = {
    "same-names": {d: "secure match=" + MX for d in DOMAINS},
    "domain-names": None,
}


def d21_attempts(s):
    return s.grep(r"to=<[^>]*@%s>.*status=deferred" % re.escape(OUTSIDER),
                  ident="smtp")


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_twenty_domains_share(world, flavour, policy):
    dns = dns_world(world)
    r = world.postfix_receiver("share", [ADDRESS],
                               cert=world.cert("mx-share", [MX] + DOMAINS))
    dns.host(MX, ADDRESS)
    for d in DOMAINS + [OUTSIDER]:
        dns.mx(d, MX)
    extra = {"smtp_tls_connection_cache_time_limit": "30s"} \
        if flavour == "patched" else {}
    s = world.sender({d: d for d in DOMAINS + [OUTSIDER]}, reuse=True,
                     level="secure", flavour=flavour, **extra)
    if POLICIES[policy]:
        s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy",
                                                       POLICIES[policy])
    dns.attach(s)
    world.start()

    ids = []
    for rnd in range(2):
        for i, d in enumerate(DOMAINS):
            ids += world.send(s, "user%d@%s" % (rnd, d), tag=policy)
            time.sleep(SPACING)
            if rnd == 0 and i == 9:
                # Spaced like the others: sent together with d10's message,
                # d21's delivery can run while d10's holds the shared
                # connection, find nothing cached and make its own (seen
                # once in a CI dry run).
                outsider = world.send(s, "user@" + OUTSIDER, tag=policy)
                time.sleep(SPACING)
    wait_for(lambda: r.counts().messages >= len(ids), 60,
             "%d messages at the receiver\n%s" % (len(ids), s.log_tail()))
    wait_for(lambda: d21_attempts(s), 30, "the d21 delivery attempt")
    # The receiver counts a message when its qmgr picks it up, which can
    # come before the sender has read "250" and logged status=sent (and
    # its "Verified TLS connection" line comes earlier in the same process).
    wait_for(lambda: len(s.grep(r"status=sent", ident="smtp")) >= len(ids), 30,
             "%d deliveries logged by the sender" % len(ids))

    c = r.counts()
    got = r.accepted_ids()
    attempts = len(d21_attempts(s))
    print("%s/%s: %d messages, %d connections, %d handshakes, %d d21 attempts"
          % (flavour, policy, c.messages, c.connections, c.handshakes, attempts))

    # Every message arrived exactly once; d21's never did.
    assert sorted(got) == sorted(ids)
    assert outsider[0] not in got
    assert c.plaintext_messages == 0
    # Every delivery was verified (sender side: level secure, Verified).
    sent = s.grep(r"status=sent", ident="smtp")
    assert len(sent) == len(ids)
    assert len(s.grep(r"^Verified TLS connection (established|reused) to %s"
                      % re.escape(MX), ident="smtp")) == len(ids)

    if flavour == "patched":
        # One connection for all forty, plus d21's own failed ones.
        assert c.handshakes == 1 + attempts, s.log_tail()
        assert c.connections == 1 + attempts
        # d21 found the shared connection, refused it, and said why.
        assert s.grep(r"not reusing cached connection: server certificate "
                      r"name does not satisfy the TLS policy", ident="smtp")
    else:
        # Upstream: one connection per domain.
        assert c.handshakes == len(DOMAINS) + attempts, s.log_tail()
