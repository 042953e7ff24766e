#!/usr/bin/python3
"""make demo: TLS connection reuse off and on, side by side.

A sender (the patched Postfix) delivers a few hundred messages to a few dozen
test domains that share a few receiving addresses: three on a Postfix
receiver and one on aiosmtpd (Debian's Python SMTP server), all with real
TLS on 127.0.0.x:25.  Mail is injected in waves a few seconds apart, as a
busy sender sees it, three times: the patched Postfix with
smtp_tls_connection_reuse = no, stock Postfix 3.10.13 with reuse = yes, and
the patched Postfix with reuse = yes.  Only that one parameter is set
(and, for stock, the tlsproxy service enabled in master.cf, without which
stock defers all TLS mail); every connection cache setting is Postfix's
default.  Counts are taken at the receivers.
"""

import os
import smtplib
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from harness import mailgen                  # noqa: E402
from harness.world import World, wait_for   # noqa: E402

DOMAINS = 32
WAVES = 6
PER_WAVE = 50
WAVE_SPACING = 3
PFX_ADDRS = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
AIO_ADDR = "127.0.0.24"


def run(flavour, reuse):
    name = "demo-%s-reuse-%s" % (flavour, "on" if reuse else "off")
    with World(name) as w:
        pr = w.postfix_receiver("mx", PFX_ADDRS)
        ar = w.aio_receiver("aio", AIO_ADDR)
        addrs = PFX_ADDRS + [AIO_ADDR]
        routes = {"d%02d.test" % i: "[%s]:25" % addrs[i % len(addrs)]
                  for i in range(DOMAINS)}
        s = w.sender(routes, reuse=reuse, level="encrypt", flavour=flavour,
                     tuned=False, tlsproxy=True if flavour == "stock" else None)
        w.start()
        domains = sorted(routes)
        total = WAVES * PER_WAVE
        t0 = time.time()
        k = 0
        for wave in range(WAVES):
            if wave:
                time.sleep(WAVE_SPACING)
            with smtplib.SMTP("127.0.0.1", s.inject_port, timeout=60) as smtp:
                for _ in range(PER_WAVE):
                    rcpt = "user%d@%s" % (k, domains[k % len(domains)])
                    _, data = mailgen.simple(rcpt, name, k)
                    smtp.sendmail("tester@sender.test", [rcpt], data)
                    k += 1
        wait_for(lambda: (pr.counts() + ar.counts()).messages >= total, 300,
                 "%d deliveries" % total)
        elapsed = time.time() - t0
        c = pr.counts() + ar.counts()
        deferred = len(s.grep(r"status=deferred"))
        return dict(flavour=flavour, reuse="yes" if reuse else "no",
                    delivered=c.messages,
                    connections=c.connections, handshakes=c.handshakes,
                    resumed=c.resumed, plaintext=c.plaintext_messages,
                    deferred=deferred, elapsed=elapsed, dir=w.dir)


def main():
    rows = [run("patched", False), run("stock", True), run("patched", True)]
    total = WAVES * PER_WAVE
    head = ("| Postfix | smtp_tls_connection_reuse | delivered | TCP connections | "
            "TLS handshakes | resumed | plaintext | elapsed s |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append("| %s | %s | %d/%d | %d | %d | %d | %d | %.1f |" % (
            r["flavour"], r["reuse"], r["delivered"], total, r["connections"],
            r["handshakes"],
            r["resumed"], r["plaintext"], r["elapsed"]))
    table = "\n".join(lines)
    print()
    print("%d messages to %d domains on %d receiving addresses (3 Postfix, 1 aiosmtpd),"
          % (total, DOMAINS, len(PFX_ADDRS) + 1))
    print("injected in %d waves %d s apart; TLS level encrypt; counted at the receivers."
          % (WAVES, WAVE_SPACING))
    print()
    print(table)
    print()
    summary = os.path.join(os.path.dirname(rows[0]["dir"]), "demo-summary.md")
    with open(summary, "w") as f:
        f.write(table + "\n")
    for r in rows:
        print("logs (%s, reuse %s): %s/*/maillog, %s/aio/events.jsonl"
              % (r["flavour"], r["reuse"], r["dir"], r["dir"]))
    print("table: %s" % summary)
    ok = all(r["delivered"] == total and r["plaintext"] == 0 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
