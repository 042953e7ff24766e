"""A domain with a TLSRPT policy rides only connections that it opened
itself, so that every TLS connection that carries its mail was reported to
it; domains without a TLSRPT policy still share.

RFC 8460 TLSRPT: a domain publishes "_smtp._tls.<domain> TXT v=TLSRPTv1;
..." and asks senders for daily summaries of their TLS connections to its
MX hosts.  smtp(8) reports the result of each TLS handshake that it makes
for such a domain (smtp_tlsrpt_skip_reused_handshakes = yes leaves out
handshakes that resume a session, and a reused connection has no handshake
at all).  With complete-policy connection keys, domains whose TLS policies
are equivalent share cached connections across nexthops; for a TLSRPT
domain the nexthop stays in the by-address key (as with SASL credentials,
test_sasl_key.py), so that domain B never rides a connection that domain A
opened, whose handshake was reported to A only.

Needs build/<base>/inst/tlsrpt (make build-tlsrpt): the patched tree built with
-DUSE_TLSRPT against the project's stub of the TLSRPT client library
(tests/stubs/tlsrpt), which appends one line per library call to
<smtp_tlsrpt_socket_name>.record; the test counts the reports per domain
there.  DNS is real (harness/dns.py): four domains in the unsigned zone
plain.test share one MX host, one receiver address; a.* and b.* publish a
TLSRPT policy, c.* and d.* do not.  Messages go out 3 s apart (a burst is
reused through qmgr's on-demand caching whatever the keys say), in the
order a a b b c d c d (b's first delivery finds a's connection cached, does
not use it, and closes it before it makes its own: one connection to the
server at a time); the receiver says which connection carried which
message.  At level "encrypt" all four policies are equivalent; at level
"secure" (default match strategy: each domain's own name) the receiver's
certificate names all four, so that without TLSRPT they would share one
verified connection (the match-name check, not the key, keeps them apart).
"""

import os
import re
import shutil
import time

import pytest

from harness.base import BASE, make_hint
from harness.dns import UNSIGNED, dns_world
from harness.postfix import installed
from harness.world import wait_for

FLAVOUR = "tlsrpt"
ADDR = "127.0.1.60"
MX = "mx." + UNSIGNED
RPT = ["a." + UNSIGNED, "b." + UNSIGNED]         # publish a TLSRPT policy
PLAIN = ["c." + UNSIGNED, "d." + UNSIGNED]       # publish none
ORDER = [RPT[0], RPT[0], RPT[1], RPT[1], PLAIN[0], PLAIN[1], PLAIN[0], PLAIN[1]]
SPACING = 3


def stub_records(path):
    """The stub library's record: one dict per call, in order."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        fields = line.split("\t")
        rec = {"pid": fields[0], "call": fields[1]}
        rec.update(f.split("=", 1) for f in fields[2:] if "=" in f)
        out.append(rec)
    return out


def reports(records):
    """The finished delivery requests (reports) per domain: [result, ...]."""
    out = {}
    for r in records:
        if r["call"] == "tlsrpt_finish_delivery_request":
            out.setdefault(r["domain"], []).append(r["result"])
    return out


@pytest.mark.parametrize("tlsrpt,level", [(False, "encrypt"), (True, "encrypt"),
                                          (False, "secure"), (True, "secure")],
                         ids=["tlsrpt-off", "tlsrpt-on", "secure-tlsrpt-off",
                              "secure-tlsrpt-on"])
def test_tlsrpt_domain_rides_only_its_own_connections(world, tlsrpt, level):
    if not installed(FLAVOUR):
        pytest.fail("build/%s/inst/%s missing: run '%s' (make check does)"
                    % (BASE, FLAVOUR, make_hint("build-tlsrpt")))
    dns = dns_world(world)
    r = world.postfix_receiver("r1", [ADDR], cert=world.cert("mx", [MX] + RPT + PLAIN),
                               flavour=FLAVOUR)
    dns.host(MX, ADDR)
    for d in RPT + PLAIN:
        dns.mx(d, MX)
    for d in RPT:
        dns.add("_smtp._tls." + d, "TXT", '"v=TLSRPTv1; rua=mailto:tlsrpt@%s"' % d)

    s = world.sender({d: d for d in RPT + PLAIN}, reuse=True, level="encrypt",
                     flavour=FLAVOUR)
    dns.attach(s)
    # The TLSRPT policy lookup needs DNS, not DNSSEC (plain.test is unsigned).
    s.main["smtp_dns_support_level"] = "enabled"
    if level != "encrypt":
        s.main["smtp_tls_policy_maps"] = s.write_table(
            "tls_policy", {d: level for d in RPT + PLAIN})
    rptdir = os.path.join(s.base, "tlsrpt")
    os.makedirs(rptdir, exist_ok=True)
    shutil.chown(rptdir, "postfix", "postfix")
    socket_name = os.path.join(rptdir, "tlsrpt.sock")
    record = socket_name + ".record"
    s.main.update({
        "smtp_tlsrpt_enable": "yes" if tlsrpt else "no",
        "smtp_tlsrpt_socket_name": socket_name,
        # Every connection stays reusable across the whole sequence.
        "smtp_tls_connection_cache_time_limit": "30s",
    })
    world.start()

    domain_of = {}
    for i, d in enumerate(ORDER):
        if i:
            time.sleep(SPACING)
        for msgid in world.send(s, "user@" + d):
            domain_of[msgid] = d
    n = len(ORDER)
    wait_for(lambda: r.counts().messages >= n, 60,
             "%d messages at the receiver\n%s" % (n, s.log_tail()))
    s.wait_log(r"status=sent", count=n, timeout=30, ident="smtp")
    wait_for(lambda: sum(len(c["messages"]) for c in r.connections()) >= n, 30,
             "%d messages mapped to connections" % n)

    c = r.counts()
    assert c.messages == n and c.plaintext_messages == 0, c
    conns = [sorted({domain_of[m] for m in conn["messages"]})
             for conn in r.connections() if conn["messages"]]
    got = reports(stub_records(record))
    logged = {d: len(s.grep(r"^TLSRPT: status=success, domain=%s," % re.escape(d),
                            ident="smtp")) for d in RPT + PLAIN}
    summary = ("connections (domains carried): %s; handshakes %d; reports %s; "
               "smtp 'TLSRPT: status=success' lines %s"
               % (conns, c.handshakes, got, logged))
    print(summary)

    if not tlsrpt:
        # The control: equivalent policies, no TLSRPT: one connection for all.
        assert conns == [sorted(RPT + PLAIN)] and c.handshakes == 1, summary
        assert got == {} and not any(logged.values()), summary
        return

    for d in RPT:
        mine = [x for x in conns if d in x]
        # Never on a connection that carried another domain's mail...
        assert all(x == [d] for x in mine), summary
        # ...and each of its connections was reported to it, with success.
        assert got.get(d) == ["success"] * len(mine) and logged[d] == len(mine), summary
        # Its second message rode its own connection.
        assert len(mine) == 1, summary
    # Domains without a TLSRPT policy still share one connection.
    assert [x for x in conns if set(x) & set(PLAIN)] == [sorted(PLAIN)], summary
    assert not any(d in got for d in PLAIN), summary
    assert c.handshakes == 3, summary
