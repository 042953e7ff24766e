#!/usr/bin/python3
"""Measure TLS connection reuse when many DANE domains share two MX hosts.

    /usr/bin/python3 tests/measure_shared_mx.py [--flavours stock,patched]

Real DNS (harness/dns.py): 30 recipient domains d00.dane.test ...
d29.dane.test in the signed zone, whose MX records all name the same two
hosts: even-numbered domains prefer mxa (MX 10 mxa, MX 20 mxb), odd-numbered
ones prefer mxb, so each host is the primary of 15 domains and the
secondary of the other 15:

    mxa.dane.test  127.0.1.100  publishes a DANE-EE TLSA record (3 1 1): mail
                   to it is DANE-verified (level "dane").
    mxb.dane.test  127.0.1.101  publishes only a PKIX-EE TLSA record
                   (1 1 1), which RFC 7672 section 3.1.3 tells SMTP clients
                   to treat as unusable: Postfix then requires TLS without
                   authenticating the server (level "encrypt").

The sender has smtp_tls_security_level = dane, TLS reuse on, every domain
in smtp_connection_cache_destinations, and a connection cache time of 30 s
(smtp_connection_cache_time_limit and connection_cache_ttl_limit, plus
smtp_tls_connection_cache_time_limit where the flavour has it): each domain
gets a message every 18 s or so in the spaced part.  Load: 200 messages, round
robin over the domains: a burst of 100 injected back to back, then 100
spaced, in 20 groups of 5 injected 3 s apart.  Each flavour (stock, then
patched) gets a fresh world; counts are taken at the two receivers.

Upstream keys the connection cache for certificate-checking levels (dane,
verify, secure) by nexthop domain, so on stock expect about one handshake
set per domain at mxa, and fewer at mxb, whose "encrypt" key has no domain.
(With both hosts at equal preference, reuse would also skew the load: a
delivery takes any cached connection to a best-preference host, and mxb's
is shared by all domains.)
Logs stay in build/<base>/run/measure_shared_mx-<flavour>/.
"""

import argparse
import os
import re
import smtplib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import mailgen                                 # noqa: E402
from harness.dns import SIGNED, dns_world, tlsa_ee          # noqa: E402
from harness.world import World, wait_for                   # noqa: E402

DOMAINS = ["d%02d.%s" % (i, SIGNED) for i in range(30)]
BURST = 100
GROUPS, GROUP_SIZE, SPACING = 20, 5, 3
HOSTS = {"mxa": "127.0.1.100", "mxb": "127.0.1.101"}
CACHE_TIME = 30         # seconds a connection may stay cached, every flavour


def inject(sender, tag, first, count):
    """count messages to the domains in turn, over one SMTP session."""
    with smtplib.SMTP("127.0.0.1", sender.inject_port, timeout=60) as smtp:
        for k in range(first, first + count):
            rcpt = "user%d@%s" % (k, DOMAINS[k % len(DOMAINS)])
            smtp.sendmail("tester@sender.test", [rcpt], mailgen.simple(rcpt, tag, k)[1])


def handshakes_per_domain(sender, host):
    """{domain: new TLS connections to host that carried its mail}: in the
    smtp(8) log an 'established' line comes right before the delivery
    line of the same process."""
    pending, per_domain = {}, {}
    for ident, pid, text in sender.log_records():
        if not ident.endswith("/smtp"):
            continue
        m = re.match(r"\w+ TLS connection (established|reused) to (\w+)\.", text)
        if m:
            pending[pid] = m.groups()
            continue
        m = re.search(r"to=<[^@]+@([^>]+)>, relay=(\w+)\..*status=sent", text)
        if m and m.group(2) == host:
            per_domain.setdefault(m.group(1), 0)
            if pending.pop(pid, None) == ("established", host):
                per_domain[m.group(1)] += 1
    return per_domain


def run(flavour):
    name = "measure_shared_mx-" + flavour
    with World(name) as w:
        dns = dns_world(w)
        receivers = {}
        for host, address in HOSTS.items():
            fq = "%s.%s" % (host, SIGNED)
            cert = w.cert(host, [fq])
            receivers[host] = w.postfix_receiver(host, [address], cert=cert)
            dns.host(fq, address)
        dns.tlsa("mxa." + SIGNED, tlsa_ee(w.cert("mxa")))
        dns.tlsa("mxb." + SIGNED, "1 1 1 " + w.cert("mxb").spki_sha256())
        for i, d in enumerate(DOMAINS):
            first, second = ("mxa", "mxb") if i % 2 == 0 else ("mxb", "mxa")
            dns.mx(d, (10, first + "." + SIGNED), (20, second + "." + SIGNED))
        s = w.sender({d: d for d in DOMAINS}, reuse=True, level="dane", flavour=flavour,
                     cache_time=CACHE_TIME)
        if "smtp_tls_connection_cache_time_limit" in s.postconf("-d"):
            # The patched series caches TLS connections for this time instead
            # (default 8 s); give it the same time as the other flavours.
            s.main["smtp_tls_connection_cache_time_limit"] = "%ds" % CACHE_TIME
        dns.attach(s)
        w.start()

        total = BURST + GROUPS * GROUP_SIZE
        t0 = time.time()
        inject(s, name, 0, BURST)
        for g in range(GROUPS):
            time.sleep(SPACING)
            inject(s, name, BURST + g * GROUP_SIZE, GROUP_SIZE)
        wait_for(lambda: sum(r.counts().messages for r in receivers.values()) >= total,
                 180, "%d deliveries\n%s" % (total, s.log_tail()))
        elapsed = time.time() - t0
        time.sleep(2)                           # late duplicates would show
        rows = []
        for host, r in receivers.items():
            c = r.counts()
            rows.append((flavour, host, c.messages, c.connections, c.handshakes,
                         c.resumed, c.plaintext_messages))
        kinds = {host: sorted({t.split()[0] for t in s.grep(
            r"TLS connection established to %s\." % host, ident="smtp")})
            for host in HOSTS}
        per_domain = {host: handshakes_per_domain(s, host) for host in HOSTS}
        problems = len(s.grep(r"status=(deferred|bounced)"))
        return rows, elapsed, kinds, per_domain, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--flavours", default="stock,patched")
    args = ap.parse_args()
    table = ["| flavour | receiver | messages | connections | handshakes | resumed "
             "| plaintext |", "|---|---|---:|---:|---:|---:|---:|"]
    notes = []
    for flavour in args.flavours.split(","):
        rows, elapsed, kinds, per_domain, problems = run(flavour)
        table += ["| %s | %s | %d | %d | %d | %d | %d |" % r for r in rows]
        notes.append("%s: %.0f s from first injection to last delivery, %d deferred "
                     "or bounced" % (flavour, elapsed, problems))
        for host in HOSTS:
            counts = sorted(per_domain[host].values())
            notes.append("%s %s: handshakes logged by smtp as %s; mail for %d domains, "
                         "new connections per domain min %d max %d" % (
                             flavour, host, "/".join(kinds[host]), len(counts),
                             counts[0] if counts else 0, counts[-1] if counts else 0))
    print("\n".join(table))
    print()
    print("\n".join("- " + n for n in notes))


if __name__ == "__main__":
    main()
