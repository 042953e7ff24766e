#!/usr/bin/python3
"""Many domains on one MX host, with mixed TLS policies: the handshakes that
"may" and "encrypt" deliveries save by riding connections made under a
stronger policy (issue 22, item 4).

    BASE=3.12-20260821 /usr/bin/python3 bench/mixed_levels.py [--messages N]
                                           [--flavours ...] [--out DIR]

Real DNS (tests/harness/dns.py: unbound, ldns-signed zone): 30 recipient
domains in the signed zone, whose MX records all name one host,
mx.dane.test (127.0.8.1, one stock Postfix receiver with a certificate for
that name and a DANE-EE TLSA record).  The sender's default level is "may"
(upstream's default); smtp_tls_policy_maps gives some domains more:

     6 domains  "secure match=mx.dane.test"   (as an MTA-STS policy would)
     6 domains  "dane"                         (TLSA: DANE-verified)
     6 domains  "encrypt"
    12 domains  no entry: "may"

Messages go round robin over the domains, one every 0.5 s (spaced mail:
qmgr's on-demand caching does not apply), default 90.  Connections may
stay cached for 30 s (smtp_tls_connection_cache_time_limit and
connection_cache_ttl_limit; stock: smtp_connection_cache_time_limit and
smtp_connection_cache_destinations, which it needs to cache at all).

Configurations, each in a fresh world:
    stock+off stock 3.12-20260821, smtp_tls_connection_reuse = no
    stock     stock 3.12-20260821, smtp_tls_connection_reuse = yes
    noride    the development series without its last patch: a delivery
              uses only connections made under an equivalent policy
              (scripts/build noride=HEAD~1 in the work tree)
    patched   the development series: "may" and "encrypt" deliveries also
              ride connections made under a stronger policy
    patched+sni  the same with smtp_tls_servername = hostname: "may" and
              "encrypt" deliveries send the SNI that "dane" sends, and so
              ride DANE connections too
    NAME      any other build, for example noroom (scripts/build
              noroom=HEAD~1: the series before smtp(8) closed an idle
              connection of another policy before making a new one)
Counts at the receiver: TLS handshakes, connections, messages, plaintext,
and the peak number of established connections at the receiver address
(sampled every 0.05 s); at the sender: deferred.
"""

import argparse
import json
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
if os.path.join(TOP, "tests") not in sys.path:
    sys.path.insert(0, os.path.join(TOP, "tests"))

from harness.dns import SIGNED, dns_world, tlsa_ee  # noqa: E402
from harness.postfix import installed            # noqa: E402
from harness.world import World, wait_for        # noqa: E402
from bench import ConnectionPeaks                # noqa: E402

ADDR = "127.0.8.1"
MX = "mx." + SIGNED
GROUPS = [("secure", "secure match=" + MX, 6),
          ("dane", "dane", 6),
          ("encrypt", "encrypt", 6),
          ("may", None, 12)]
CACHE_TIME = 30


def domains():
    out = []
    for kind, policy, n in GROUPS:
        for i in range(n):
            out.append(("%s%02d.%s" % (kind, i, SIGNED), policy))
    # Interleave the groups, so that consecutive messages differ in policy.
    return [out[i] for i in sorted(range(len(out)), key=lambda i: (i % 6, i))]


def run(config, messages, spacing):
    flavour, _, extra = config.partition("+")
    doms = domains()
    with World("mixed-%s" % config.replace("+", "-")) as w:
        dns = dns_world(w)
        cert = w.cert("mx", [MX])
        r = w.postfix_receiver("r1", [ADDR], cert=cert)
        dns.host(MX, ADDR)
        dns.tlsa(MX, tlsa_ee(cert))
        for d, _ in doms:
            dns.mx(d, (10, MX))
        s = w.sender({d: d for d, _ in doms}, reuse=(extra != "off"), level="may",
                     flavour=flavour, cache_time=CACHE_TIME)
        if "smtp_tls_connection_cache_time_limit" in s.postconf("-d"):
            s.main["smtp_tls_connection_cache_time_limit"] = "%ds" % CACHE_TIME
        s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {
            d: p for d, p in doms if p})
        if extra == "sni":
            s.main["smtp_tls_servername"] = "hostname"
        dns.attach(s)
        w.start()
        peaks = ConnectionPeaks([ADDR])
        done = threading.Event()

        def sample():
            while not done.is_set():
                peaks.sample()
                time.sleep(0.05)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.time()
        try:
            for i in range(messages):
                if i:
                    time.sleep(spacing)
                w.send(s, "user@" + doms[i % len(doms)][0], tag="mixed")
            wait_for(lambda: len(s.grep(r"status=sent")) >= messages, 180,
                     "%d messages sent\n%s" % (messages, s.log_tail()))
            wait_for(lambda: r.counts().messages >= messages, 60, "all received")
            time.sleep(1)
        finally:
            done.set()
            sampler.join()
        c = r.counts()
        return {"config": config, "messages": c.messages,
                "plaintext": c.plaintext_messages, "handshakes": c.handshakes,
                "connections": c.connections, "peak": peaks.highest(),
                "deferred": len(s.grep(r"status=(deferred|bounced)")),
                "seconds": round(time.time() - t0, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=90)
    ap.add_argument("--spacing", type=float, default=0.5)
    ap.add_argument("--flavours", default="stock+off,stock,noride,patched,patched+sni")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = []
    for f in a.flavours.split(","):
        if not installed(f.partition("+")[0]):
            sys.exit("mixed_levels: build/%s/inst/%s is missing (make build-stock, "
                     "scripts/build noride=HEAD~1)" % (os.environ.get("BASE", "?"), f))
        rows.append(run(f, a.messages, a.spacing))
        print(json.dumps(rows[-1]), flush=True)
    lines = ["| sender | messages | TLS handshakes | connections "
             "| peak connections at the receiver | in plaintext | deferred |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for x in rows:
        lines.append("| %s | %d | %d | %d | %d | %d | %d |" % (
            x["config"], x["messages"], x["handshakes"], x["connections"],
            x["peak"], x["plaintext"], x["deferred"]))
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "mixed.md"), "w") as f:
            f.write(text)
        with open(os.path.join(a.out, "mixed.json"), "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
