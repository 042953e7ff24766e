#!/usr/bin/python3
"""TLS session resumption for new connections: resumed vs full handshakes.

    /usr/bin/python3 bench/resumption.py [--quick] [--out DIR]
                     [--configs stock-off,stock-on,patched-on]
                     [--receivers tls13,tls12] [--workloads R1,R2,R3]

Connection reuse saves the handshake only while a connection is cached; the
connections that must be new can still resume an earlier TLS session when the
sender has a client session cache.  Every sender here has one,
smtp_tls_session_cache_database = btree:${data_directory}/smtp_scache (as
Debian's default main.cf sets it), TLS level encrypt, no CAfile (as
bench.py), and Postfix's default connection cache settings; only the build
and smtp_tls_connection_reuse differ:

    stock-off   stock 3.10.13, reuse off (in-process TLS in each smtp(8))
    stock-on    stock 3.10.13, reuse on (tlsproxy(8); master.cf entry enabled)
    patched-on  the series, reuse on (its default)
    patched-off the series, reuse off (not run unless named)

Receivers (one Postfix smtpd instance, stock flavour, on the workload's
addresses, smtpd_tls_loglevel = "summary, cache"):

    tls13       TLS 1.3, smtpd's defaults: stateless session tickets
    tls12       TLS 1.2 only (smtpd_tls_protocols), RFC 5077 tickets
    tls12-ids   TLS 1.2 only, session IDs from a server-side session cache
                (smtpd_tls_session_cache_database, tls_ssl_options = NO_TICKET)

Workloads (full / --quick):

    R1 gaps     6 / 4 messages to 2 domains on one address, 10 s apart:
                beyond every connection cache time (stock 2 s, the series'
                smtp_tls_connection_cache_time_limit 8 s), so every delivery
                needs a new connection
    R2 burst    120 / 40 messages to 12 domains on 3 addresses, injected back
                to back: deliveries in parallel need parallel connections
    R3 MX gaps  8 messages, round robin to 4 domains whose MX records name
                one host (real DNS, tests/harness/dns.py), 9 s apart: the
                nexthop is the domain, as on the Internet

Counted at the receiver: TCP connections, TLS handshakes and how many of them
resumed a session (smtpd's "Reusing old session").  "resumable" is handshakes
minus the number of receiver addresses that got any: the first handshake to
an address cannot resume.  R1 and R2 route every domain to an [address]
nexthop, one nexthop per address.  In R3 the nexthop is the domain: stock
keys its session cache by nexthop, so there each domain's first connection
is a full handshake; the series keys it by server and complete TLS policy,
so domains with equivalent policies share sessions.  In a burst, connections
that start before the first handshake to their address has finished cannot
resume either, so R2 can stay below 100 % for a reason that is not a fault.
The sender logs at smtp_tls_loglevel = 2 (tlsproxy(8) follows it), and
"missed" counts its session cache lookups that found nothing although a
session with the same ID had been saved before: full handshakes that could
have resumed, which should be 0.

Output: a table on standard output and in DIR/resumption.md, every run in
DIR/resumption.json (default DIR: bench/results/resumption-<UTC time>).
bench.py can call run() and markdown() instead.  Exit status 0 when every
message was delivered over TLS.
"""

import argparse
import datetime
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))

from harness.base import BASE, make_hint     # noqa: E402
from harness.postfix import installed        # noqa: E402
from harness.world import World, wait_for    # noqa: E402

SESSION_CACHE = "btree:${data_directory}/smtp_scache"

CONFIGS = {
    "stock-off": ("stock", False),
    "stock-on": ("stock", True),
    "patched-on": ("patched", True),
    "patched-off": ("patched", False),
}
DEFAULT_CONFIGS = ["stock-off", "stock-on", "patched-on"]

RECEIVERS = {
    "tls13": {},
    "tls12": {"smtpd_tls_protocols": ">=TLSv1.2, <=TLSv1.2"},
    "tls12-ids": {"smtpd_tls_protocols": ">=TLSv1.2, <=TLSv1.2",
                  "smtpd_tls_session_cache_database":
                      "btree:${data_directory}/smtpd_scache",
                  "tls_ssl_options": "NO_TICKET"},
}
DEFAULT_RECEIVERS = ["tls13", "tls12"]


def workloads(quick):
    return {
        "R1": {"title": "gaps", "messages": 4 if quick else 6, "domains": 2,
               "addresses": ["127.0.6.1"], "spacing": 9 if quick else 10},
        "R2": {"title": "burst", "messages": 40 if quick else 120, "domains": 12,
               "addresses": ["127.0.6.11", "127.0.6.12", "127.0.6.13"],
               "spacing": 0},
        "R3": {"title": "MX gaps", "messages": 8, "domains": 4,
               "addresses": ["127.0.6.21"], "spacing": 9, "mx": True},
    }


def routes(wl):
    a = wl["addresses"]
    if wl.get("mx"):
        from harness.dns import UNSIGNED
        return {"r%02d.%s" % (i, UNSIGNED): "r%02d.%s" % (i, UNSIGNED)
                for i in range(wl["domains"])}
    return {"r%02d.test" % i: "[%s]:25" % a[i % len(a)] for i in range(wl["domains"])}


def session_lookups(sender):
    """The sender's session cache lookups, from its TLS log (level 2, where
    the TLS library logs "looking for session ID in smtp cache", "reloaded
    session ID ..." and "save session ID ..."; tlsproxy(8) logs them too):
    lookups, those made after a session with the same ID had been saved
    (they should all find it), and of those the ones that did not
    ("missed": a full handshake that could have resumed); "offered" are
    the sessions found and offered to the server, which the receiver
    should count as resumed."""
    saved, after, reloaded, lookups = set(), 0, 0, 0
    for _, _, text in sender.log_records():
        m = re.match(r"(looking for|reloaded|save) session (\S+) (in|from|to) ", text)
        if not m:
            continue
        what, sid = m.group(1), m.group(2)
        if what == "save":
            saved.add(sid)
        elif what == "reloaded":
            reloaded += 1
        else:
            lookups += 1
            after += sid in saved
    return {"lookups": lookups, "lookups_after_save": after,
            "offered": reloaded, "missed": max(0, after - reloaded)}


def run_one(key, wl, config, receiver, log=print):
    flavour, reuse = CONFIGS[config]
    name = "resumption-%s-%s-%s" % (key.lower(), config, receiver)
    with World(name, flavour=flavour) as w:
        r = w.postfix_receiver("mx", wl["addresses"], **RECEIVERS[receiver])
        rt = routes(wl)
        if wl.get("mx"):
            from harness.dns import UNSIGNED, dns_world
            dns = dns_world(w)
            mx = "mx." + UNSIGNED
            dns.host(mx, wl["addresses"][0])
            for d in rt:
                dns.mx(d, mx)
        s = w.sender(rt, reuse=reuse, flavour=flavour, tuned=False,
                     tlsproxy=True if flavour == "stock" else None,
                     smtp_tls_CAfile="", smtp_tls_loglevel="2",
                     smtp_tls_session_cache_database=SESSION_CACHE)
        if wl.get("mx"):
            dns.attach(s)
        w.start()
        domains = sorted(rt)
        n = wl["messages"]
        t0 = time.time()
        for i in range(n):
            if i and wl["spacing"]:
                time.sleep(wl["spacing"])
            w.send(s, "user%d@%s" % (i, domains[i % len(domains)]), tag=name)
        wait_for(lambda: r.counts().messages >= n, 120 + n,
                 "%d messages at the receiver" % n)
        wait_for(lambda: len(s.grep(r"status=sent")) >= n, 30, "%d deliveries logged" % n)
        elapsed = time.time() - t0
        total = r.counts()
        used = [a for a in wl["addresses"] if r.counts(a).handshakes]
        row = {
            "workload": key, "title": wl["title"], "config": config,
            "flavour": flavour, "reuse": reuse, "receiver": receiver,
            "messages": total.messages, "plaintext": total.plaintext_messages,
            "connections": total.connections, "handshakes": total.handshakes,
            "resumed": total.resumed, "full": total.handshakes - total.resumed,
            "resumable": max(0, total.handshakes - len(used)),
            "protocols": sorted({p for p, _ in total.tls}),
            "elapsed": round(elapsed, 1),
        }
        row.update(session_lookups(s))
        row["resumed_pct"] = (round(100.0 * row["resumed"] / row["resumable"], 1)
                              if row["resumable"] else None)
        log("%s %s %s: %d msgs, %d connections, %d handshakes, %d resumed, "
            "%d full (resumable %d); sender: %d lookups, %d after a save, %d offered, %d missed"
            % (key, config, receiver, row["messages"], row["connections"],
               row["handshakes"], row["resumed"], row["full"], row["resumable"],
               row["lookups"], row["lookups_after_save"], row["offered"],
               row["missed"]))
        return row


def run(quick=False, configs=None, receivers=None, keys=None, log=print):
    """Run the resumption workloads; returns one dict per run.  R3 runs
    with the first receiver only."""
    wls = workloads(quick)
    rows = []
    for key in keys or sorted(wls):
        for receiver in (receivers or DEFAULT_RECEIVERS)[:1 if key == "R3" else None]:
            for config in configs or DEFAULT_CONFIGS:
                rows.append(run_one(key, wls[key], config, receiver, log))
    return rows


def markdown(rows, quick=False):
    wls = workloads(quick)
    out = ["| workload | receiver | configuration | messages | connections "
           "| handshakes | full | resumed | resumed / resumable | missed |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        wl = wls[r["workload"]]
        pct = "%d/%d (%s %%)" % (r["resumed"], r["resumable"],
                                 "%.0f" % r["resumed_pct"]) if r["resumable"] else "-"
        out.append("| %s %s (%d to %d addr.%s) | %s %s | %s | %d | %d | %d | %d | %d | %s | %d |"
                   % (r["workload"], r["title"], wl["messages"], len(wl["addresses"]),
                      ", %g s apart" % wl["spacing"] if wl["spacing"] else ", burst",
                      r["receiver"], "/".join(r["protocols"]), r["config"],
                      r["messages"], r["connections"], r["handshakes"], r["full"],
                      r["resumed"], pct, r["missed"]))
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS))
    ap.add_argument("--receivers", default=",".join(DEFAULT_RECEIVERS))
    ap.add_argument("--workloads", default="R1,R2,R3")
    a = ap.parse_args()
    configs = a.configs.split(",")
    receivers = a.receivers.split(",")
    for c in configs:
        if c not in CONFIGS:
            ap.error("unknown configuration %s" % c)
        if not installed(CONFIGS[c][0]):
            ap.error("build/%s/inst/%s missing: run %s"
                     % (BASE, CONFIGS[c][0], make_hint("build build-stock")))
    for rc in receivers:
        if rc not in RECEIVERS:
            ap.error("unknown receiver %s" % rc)
    out = a.out or os.path.join(HERE, "results", "resumption-%s%s" % (
        datetime.datetime.utcnow().strftime("%Y%m%dT%H%M%SZ"), "-quick" if a.quick else ""))
    os.makedirs(out, exist_ok=True)
    rows = run(a.quick, configs, receivers, a.workloads.split(","))
    table = markdown(rows, a.quick)
    with open(os.path.join(out, "resumption.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out, "resumption.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(table)
    print("results in %s" % out)
    ok = all(r["messages"] > 0 and r["plaintext"] == 0 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
