#!/usr/bin/python3
"""Bench workload W5: TLS connection reuse over a WAN path (RTT 100 ms).

    /usr/bin/python3 bench/bench.py --workloads W5 [--quick] [--out DIR]
    /usr/bin/python3 bench/w5_wan.py [--quick] [--out DIR]      (the same)

On loopback a round trip costs nothing, so W1-W4 cannot show what reuse is
for on the Internet: a new SMTP/TLS connection costs many round trips
before the first MAIL command, a reused one few.  Here the sender reaches
its receiver through tests/harness/delayrelay.py, a user-space relay that
forwards every chunk after a fixed one-way delay of 50 ms (this kernel has
no netem) and makes TCP connect cost what it costs on a WAN.

Receiver: one stock Postfix instance (TLS 1.3 here), listening on
127.0.7.2:25 behind the relay on 127.0.7.1:25, smtpd_client_port_logging
on so that each of its sessions can be matched to a relayed connection.
Sender: level encrypt, no CAfile (as bench.py), per-destination
concurrency 5 (smtp_destination_concurrency_limit), in three
configurations side by side:

    stock reuse off   3.10.13, Postfix's default connection cache settings
    stock reuse on    3.10.13, smtp_tls_connection_reuse = yes, and cache
                      times raised so that it reuses at all:
                      smtp_connection_cache_destinations = the relay,
                      smtp_connection_cache_time_limit = 30s,
                      connection_cache_ttl_limit = 30s
    patched reuse on  the series, smtp_tls_connection_reuse = yes, every
                      other setting at its default

Traffic (full / --quick), each in a fresh world per configuration:

    spaced   15 / 5 messages of ~10 KB to one destination, one every 2 s
    burst    100 / 30 messages of ~10 KB to one destination, all in the
             queue at once (injected on hold, then released), delivered
             with at most 5 connections at a time

Figures, per delivery and separately for deliveries over a new and over a
reused connection (a status=sent line with conn_use= is a delivery over a
reused connection):

    RT (delays)  round trips: c+d of the sender's delays=a/b/c/d (connection
                 set-up, or reuse, plus transmission) / RTT
    RT (relay)   round trips counted at the relay, i.e. at the receiver's
                 end of the path: the server's flights (runs of bytes
                 towards the sender) of the delivery, up to the reply to
                 its message content, plus one for the TCP connect of a new
                 connection (a connection's first delivery)
    relay time   the same delivery's time, from the sender's connect (new)
                 or its first byte (reused) to the arrival of the server's
                 reply to the content at the sender, / RTT
    latency      Postfix's delay= (arrival to delivery), p50 and p99
    msg/s per destination  (burst) delivered / time from the release to
                 the last status=sent
    msg/s per connection   (burst) median over the connections of its
                 deliveries / its time at the relay from the accept to the
                 end of its last delivery

The relay's deliveries per connection must equal the receiver's messages
per smtpd session (matched by the client port); a difference is listed in
w5.json (relay_receiver_mismatch) and fails the run.

Results: w5.md and w5.json in the bench's --out directory; bench.py adds
the tables to results.md.
"""

import argparse
import base64
import datetime
import json
import os
import random
import re
import smtplib
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
if os.path.join(TOP, "tests") not in sys.path:
    sys.path.insert(0, os.path.join(TOP, "tests"))

from harness.delayrelay import DelayRelay      # noqa: E402
from harness.world import World                # noqa: E402

RTT = 0.1
RELAY = "127.0.7.1"         # the sender's nexthop
RECEIVER = "127.0.7.2"      # the receiver, behind the relay
DOMAIN = "w5.test"
SIZE = 10 * 1024
CONCURRENCY = 5
CONFIGS = [("stock", False), ("stock", True), ("patched", True)]


def label(flavour, reuse):
    return "%s reuse %s" % (flavour, "on" if reuse else "off")


def traffics(quick):
    return [
        {"key": "spaced", "messages": 5 if quick else 15, "spacing": 2.0},
        {"key": "burst", "messages": 30 if quick else 100, "spacing": 0},
    ]


# -- messages -------------------------------------------------------------

_body = None


def message(rcpt, tag, i):
    global _body
    if _body is None:
        raw = random.Random(SIZE).randbytes(SIZE * 3 // 4)
        _body = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    head = ("From: bench@sender.test\r\nTo: %s\r\nSubject: %s message %d\r\n"
            "Message-ID: <%s.%d.%s@sender.test>\r\n\r\n"
            % (rcpt, tag, i, tag, i, os.urandom(6).hex()))
    return head.encode() + _body


def inject(port, tag, indexes):
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
        for i in indexes:
            rcpt = "user%d@%s" % (i, DOMAIN)
            smtp.sendmail("bench@sender.test", [rcpt], message(rcpt, tag, i))


# -- logs ---------------------------------------------------------------

SENT_RE = re.compile(r"^(\w+): to=<[^>]*>, relay=\S+(?:, conn_use=(\d+))?, delay=([\d.]+), "
                     r"delays=([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+), .*status=sent")
RCV_CLIENT_RE = re.compile(r"^(\w+): client=\S+\]:(\d+)")
RCV_QMGR_RE = re.compile(r"^(\w+): from=<.*>, size=\d+")


def sent_lines(snd):
    out = []
    for text in snd.grep(r"status=sent", ident="smtp"):
        m = SENT_RE.match(text)
        if m:
            qid, conn_use, delay, a, b, c, d = m.groups()
            out.append({"qid": qid, "conn_use": int(conn_use or 1), "delay": float(delay),
                        "delays": [float(a), float(b), float(c), float(d)]})
    return out


def receiver_by_port(rcv):
    """{client port: messages accepted over that smtpd session} from the
    receiver's log (smtpd_client_port_logging = yes; a message counts when
    qmgr picked it up, i.e. after end of DATA, as counts() does)."""
    port_of, per = {}, {}
    for ident, _, text in rcv.log_records():
        if ident.endswith("/smtpd"):
            m = RCV_CLIENT_RE.match(text)
            if m:
                port_of[m.group(1)] = int(m.group(2))
        elif ident.endswith("/qmgr"):
            m = RCV_QMGR_RE.match(text)
            if m and m.group(1) in port_of:
                p = port_of.pop(m.group(1))
                per[p] = per.get(p, 0) + 1
    return per


# -- the relay's view -------------------------------------------------------

def flights(conn):
    """A relayed connection's trace as flights: runs of chunks in one
    direction with none in the other between them, [direction, bytes,
    first time, last time] (times at the relay)."""
    out = []
    for t, d, n in conn.trace:
        if out and out[-1][0] == d:
            out[-1][1] += n
            out[-1][3] = t
        else:
            out.append([d, n, t, t])
    return out


def deliveries(conn):
    """The deliveries on a relayed connection, as the relay saw them.  A
    delivery ends with the server's flight that follows the client's
    message content (a client flight of at least half a message); each
    server flight up to that one is a round trip that the sender waited
    for, plus one for the TCP connect on a new connection.  A delivery
    starts at the accept (the sender's connect) on a new connection, else
    at the first client byte after the previous delivery; it ends when the
    server's last reply reached the sender (one delay after it passed the
    relay).  [{first, round_trips, start, end, seconds}]"""
    out, start, waits, content = [], conn.accepted, 0, False
    for d, n, t_first, t_last in flights(conn):
        if d == "up":
            if start is None:
                start = t_first
            content = content or n >= SIZE // 2
            continue
        if start is None:               # a server flight after the end of
            continue                    # a delivery, unasked for: not one
        waits += 1
        if content:
            first = not out
            out.append({"first": first, "round_trips": waits + first,
                        "start": start, "end": t_last + RTT / 2,
                        "seconds": t_last + RTT / 2 - start})
            start, waits, content = None, 0, False
    return out


def relay_figures(relay, per_port):
    """Per relayed connection: deliveries (as the relay saw them, and as
    counted at the receiver), and its time from the accept to the end of
    its last delivery."""
    conns = []
    for c in relay.conns:
        ds = deliveries(c)
        conns.append({
            "n": c.n, "upstream_port": c.upstream_port, "how": c.how,
            "deliveries_at_receiver": per_port.get(c.upstream_port, 0),
            "deliveries": ds, "start": c.accepted,
            "end": ds[-1]["end"] if ds else None,
        })
    return conns


# -- one run ------------------------------------------------------------

def run_one(tr, flavour, reuse, log):
    name = "bench-w5-%s-%s-reuse-%s" % (tr["key"], flavour, "on" if reuse else "off")
    n = tr["messages"]
    with World(name, flavour=flavour) as w:
        rcv = w.postfix_receiver("mx", [RECEIVER], smtpd_client_port_logging="yes")
        relay = DelayRelay(RELAY, 25, RECEIVER, 25, delay=RTT / 2)
        w.things.append(relay)
        extra = {"smtp_tls_CAfile": "",
                 "smtp_destination_concurrency_limit": CONCURRENCY}
        if tr["key"] == "burst":
            # Injected mail goes on hold; released all at once below.
            extra["smtpd_end_of_data_restrictions"] = "check_client_access static:HOLD"
        snd = w.sender({DOMAIN: "[%s]:25" % RELAY}, reuse=reuse, flavour=flavour,
                       tuned=(flavour == "stock" and reuse), cache_time=30,
                       tlsproxy=True if flavour == "stock" else None, **extra)
        rcv.start()
        relay.start()
        snd.start()

        t0 = time.time()
        if tr["key"] == "spaced":
            def spaced():
                for i in range(n):
                    time.sleep(max(0, t0 + i * tr["spacing"] - time.time()))
                    inject(snd.inject_port, name, [i])
            injector = threading.Thread(target=spaced, daemon=True)
            injector.start()
        else:
            parts = [list(range(k, n, 4)) for k in range(4)]
            threads = [threading.Thread(target=inject, args=(snd.inject_port, name, p))
                       for p in parts]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            deadline = time.time() + 60
            while sum(1 for q in snd.queued() if q["queue_name"] == "hold") < n:
                if time.time() > deadline:
                    raise RuntimeError("W5 %s: %d messages not all on hold" % (name, n))
                time.sleep(0.2)
            t0 = time.time()
            subprocess.run([snd.cmd("postsuper"), "-c", snd.conf, "-H", "ALL"],
                           check=True, capture_output=True)
            snd.flush()
            injector = None

        # Poll the sender's log for the deliveries.
        t_last, sent = None, 0
        deadline = time.time() + n * tr["spacing"] + 120 + n
        while time.time() < deadline:
            k = len(snd.grep(r"status=sent", ident="smtp"))
            if k > sent:
                sent, t_last = k, time.time()
            if sent >= n:
                break
            time.sleep(0.05)
        if injector:
            injector.join(5)
        deadline = time.time() + 10
        while rcv.counts().messages < sent and time.time() < deadline:
            time.sleep(0.2)
        # Everything stops here, the sender first: cached connections end.

    sent_recs = sent_lines(snd)
    c = rcv.counts()
    per_port = receiver_by_port(rcv)
    conns = relay_figures(relay, per_port)
    res = {
        "traffic": tr["key"], "config": label(flavour, reuse), "flavour": flavour,
        "reuse": reuse, "messages": n, "delivered": len(sent_recs), "received": c.messages,
        "plaintext": c.plaintext_messages, "connections": c.connections,
        "handshakes": c.handshakes, "resumed": c.resumed,
        "tls_protocols": sorted({p for p, _ in c.tls}),
        "deferred_lines": len(snd.grep(r"status=deferred", ident="smtp")),
        "seconds": (t_last - t0) if t_last else None,
        "sent": sent_recs, "relay_connections": conns, "dir": w.dir,
    }
    res["summary"] = summarize(res)
    s = res["summary"]
    log("W5 %-6s %-16s %3d/%d delivered, %d connections, RT/delivery new %s reused %s, "
        "%s msg/s" % (tr["key"], res["config"], res["delivered"], n, c.connections,
                      fmt(s["new"]["rt_delays"], "%.1f"), fmt(s["reused"]["rt_delays"], "%.1f"),
                      fmt(s["msgs_per_destination"], "%.2f")))
    return res


# -- figures ------------------------------------------------------------

def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))]


def mean(values):
    return sum(values) / len(values) if values else None


def median(values):
    return percentile(values, 50)


def summarize(res):
    out = {}
    for kind, pick in (("new", lambda r: r["conn_use"] == 1),
                       ("reused", lambda r: r["conn_use"] > 1)):
        recs = [r for r in res["sent"] if pick(r)]
        rts = [(r["delays"][2] + r["delays"][3]) / RTT for r in recs]
        out[kind] = {"deliveries": len(recs), "rt_delays": mean(rts),
                     "rt_delays_p50": median(rts),
                     "latency_p50": percentile([r["delay"] for r in recs], 50),
                     "latency_p99": percentile([r["delay"] for r in recs], 99)}
    # The relay's view of each delivery: a connection's first delivery is
    # over a new connection.
    relayed = [d for c in res["relay_connections"] for d in c["deliveries"]]
    for kind, first in (("new", True), ("reused", False)):
        ds = [d for d in relayed if d["first"] == first]
        out[kind]["relay_deliveries"] = len(ds)
        out[kind]["rt_relay"] = mean([d["round_trips"] for d in ds])
        out[kind]["rt_relay_time"] = mean([d["seconds"] / RTT for d in ds])
    conns = [c for c in res["relay_connections"] if c["deliveries"]]
    out["relay_deliveries"] = len(relayed)
    out["relay_receiver_mismatch"] = [
        (c["n"], len(c["deliveries"]), c["deliveries_at_receiver"])
        for c in res["relay_connections"]
        if len(c["deliveries"]) != c["deliveries_at_receiver"]]
    out["deliveries_per_connection"] = len(relayed) / len(conns) if conns else None
    # Per connection: its deliveries / its time from the accept to the end
    # of its last delivery (burst traffic; spaced connections are idle
    # between the messages).
    out["msgs_per_connection"] = median([len(c["deliveries"]) / (c["end"] - c["start"])
                                         for c in conns]) \
        if res["traffic"] == "burst" else None
    out["msgs_per_destination"] = (res["delivered"] / res["seconds"]
                                   if res["traffic"] == "burst" and res["seconds"] else None)
    out["latency_p50"] = percentile([r["delay"] for r in res["sent"]], 50)
    out["latency_p99"] = percentile([r["delay"] for r in res["sent"]], 99)
    return out


def fmt(v, f):
    return "n/a" if v is None else f % v


def markdown(results, quick):
    out = ["## W5 WAN: RTT %d ms through a delaying relay%s" % (RTT * 1000,
                                                                ", quick" if quick else ""),
           "",
           "Receiver: stock Postfix, TLS %s, level encrypt; sender concurrency per "
           "destination %d.  RT = round trips per delivery: *delays* = the sender's "
           "delays= c+d / RTT; *relay* = the server's flights counted at the relay "
           "(+1 for the TCP connect of a new connection); *relay time* = the "
           "delivery's time seen from the relay / RTT.  Latency = delay= (arrival "
           "to delivery).  Stock reuse on has its cache times raised to 30 s; "
           "patched reuse on runs with the defaults."
           % ("/".join(sorted({p for r in results for p in r["tls_protocols"]})) or "?",
              CONCURRENCY), ""]
    for tr in ("spaced", "burst"):
        rows = [r for r in results if r["traffic"] == tr]
        if not rows:
            continue
        r0 = rows[0]
        out += ["### W5 %s: %d messages of ~%d KB to one destination%s" % (
            tr, r0["messages"], SIZE // 1024,
            ", one every 2 s" if tr == "spaced" else
            ", all queued at once, at most %d connections" % CONCURRENCY), "",
            "| configuration | connection | deliveries | RT (delays) | RT (relay) "
            "| relay time / RTT | latency p50 s | latency p99 s |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            for kind in ("new", "reused"):
                s = r["summary"][kind]
                out.append("| %s | %s | %d | %s | %s | %s | %s | %s |" % (
                    r["config"], kind, s["deliveries"], fmt(s["rt_delays"], "%.2f"),
                    fmt(s["rt_relay"], "%.2f"), fmt(s["rt_relay_time"], "%.2f"),
                    fmt(s["latency_p50"], "%.2f"),
                    fmt(s["latency_p99"], "%.2f")))
        out.append("")
        base = {r["config"]: r["summary"]["msgs_per_destination"] for r in rows}
        out += ["| configuration | delivered | TCP connections | TLS handshakes "
                "| deliveries / connection "
                "| msg/s per connection | msg/s per destination "
                "| vs stock reuse off | vs stock reuse on |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            s = r["summary"]
            m = s["msgs_per_destination"]
            vs = [fmt(m / base[b] if m and base.get(b) else None, "%.2fx")
                  for b in ("stock reuse off", "stock reuse on")]
            out.append("| %s | %d/%d | %d | %d | %s | %s | %s | %s | %s |" % (
                r["config"], r["delivered"], r["messages"], r["connections"],
                r["handshakes"], fmt(s["deliveries_per_connection"], "%.1f"),
                fmt(s["msgs_per_connection"], "%.2f"),
                fmt(m, "%.2f"), vs[0], vs[1]))
        out.append("")
    return "\n".join(out)


def run(quick, outdir, log):
    """Run W5 for every configuration; write w5.md and w5.json into outdir.
    Returns {"markdown", "results", "failed", "ok"}."""
    results, failed = [], []
    for tr in traffics(quick):
        for flavour, reuse in CONFIGS:
            try:
                results.append(run_one(tr, flavour, reuse, log))
            except Exception as e:      # report, go on with the next run
                failed.append("W5 %s %s: %s" % (tr["key"], label(flavour, reuse), e))
                log("FAILED " + failed[-1])
    md = markdown(results, quick)
    if failed:
        md += "\nFailed W5 runs:\n\n" + "".join("- %s\n" % x for x in failed)
    with open(os.path.join(outdir, "w5.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(outdir, "w5.json"), "w") as f:
        json.dump({"rtt": RTT, "results": results, "failed": failed}, f, indent=1)
    ok = not failed and all(
        r["delivered"] == r["messages"] and r["received"] >= r["delivered"]
        and not r["plaintext"] and not r["summary"]["relay_receiver_mismatch"]
        for r in results)
    return {"markdown": md, "results": results, "failed": failed, "ok": ok}


def main():
    ap = argparse.ArgumentParser(description="bench workload W5 (WAN, RTT 100 ms)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", help="results directory (default bench/results/<UTC time>-w5)")
    args = ap.parse_args()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    outdir = os.path.abspath(args.out or os.path.join(
        HERE, "results", stamp + "-w5" + ("-quick" if args.quick else "")))
    os.makedirs(outdir, exist_ok=True)

    def log(text):
        print("%s %s" % (time.strftime("%H:%M:%S"), text), flush=True)

    r = run(args.quick, outdir, log)
    print()
    print(r["markdown"])
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
