#!/usr/bin/python3
"""W6: thousands of cached TLS connections on one sender.

    /usr/bin/python3 bench/w6_many.py [--n 100,1000,5000] [--flavours stock,patched]
                                      [--out DIR] [--nofile N]

(make w6 runs it with W6_ARGS.)  For each N and each flavour, a fresh world:
one aiosmtpd process (tests/harness/manyreceiver.py) listening on the
wildcard address of a private network namespace, so that every 127.x.y.z
is one of its addresses, and a Postfix sender, TLS level encrypt,
smtp_tls_connection_reuse = yes, with every connection cache time raised so
that nothing expires during the run:

    smtp_connection_cache_destinations  every receiver address (stock caches
                                        only for the destinations it names)
    smtp_connection_cache_time_limit,   1800s (stock uses the first for its
    smtp_tls_connection_cache_time_limit,     TLS connections, the series
    connection_cache_ttl_limit                the second)
    smtp_connection_reuse_time_limit    3600s
    smtp_data_done_timeout              3600s (tlsproxy(8)'s idle timer on a
                                        connection is this + 10 s)

Round 0: one message to each of B (10) baseline addresses, so that tlsproxy
and scache exist; the processes are measured (the baseline).  Round 1: one
message to each of N other addresses, each on its own domain; measured again
when every connection is idle in the cache.  Round 2: every one of the N
addresses again, while its connection is cached; measured again.

Per N and flavour: tlsproxy processes and the remote connections each holds,
RSS per idle cached connection (tlsproxy and scache: RSS after round 1 minus
the baseline, / N), descriptors per process against its soft limit, sender
CPU per message in round 2 (all processes of the instance, and split into
smtp, tlsproxy, scache), TLS handshakes and TCP connections the receiver saw
in round 2 (0 when all were still cached), warnings/fatal/panic lines and
abnormal process exits in the sender's log, and whether every message was
delivered exactly once to the address its domain routes to.

Everything runs in a private network namespace: run as root, this program
re-executes itself under "unshare -n" (unless W6_NETNS=1 says it already
runs in one).  Results: bench/results/<UTC time>-w6/ (results.md,
results.json), Postfix files in build/<base>/run/w6-<flavour>-<N>/.
"""

import argparse
import collections
import datetime
import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))
sys.path.insert(0, HERE)

from harness.many import ManyReceiver, address  # noqa: E402
from harness.world import World               # noqa: E402
import bench                                   # noqa: E402

PYTHON = "/usr/bin/python3"
BASELINE = 10
CACHE_TIME = 1800
WRAP = os.environ.get("W6_WRAP")      # "daemon:shell lines;..." run before daemons
PAUSE = int(os.environ.get("W6_PAUSE", "0"))    # seconds to wait after round 1


# -- injection --------------------------------------------------------------

def message(rcpt, msgid):
    return ("From: w6@sender.test\r\nTo: %s\r\nSubject: w6\r\nMessage-ID: %s\r\n\r\n"
            "W6 message.\r\n" % (rcpt, msgid)).encode() + b"x" * 1000 + b"\r\n"


def inject(port, rcpts, tag, threads=4):
    """Send one message to each recipient over a few SMTP sessions; returns
    {Message-ID: recipient}."""
    todo = list(enumerate(rcpts))
    lock = threading.Lock()
    sent, errors = {}, []

    def worker():
        smtp = None
        while True:
            with lock:
                if not todo:
                    break
                i, rcpt = todo.pop()
            msgid = "<w6.%s.%d@sender.test>" % (tag, i)
            for attempt in range(3):
                try:
                    if smtp is None:
                        smtp = smtplib.SMTP("127.0.0.1", port, timeout=120)
                    smtp.sendmail("w6@sender.test", [rcpt], message(rcpt, msgid))
                    with lock:
                        sent[msgid] = rcpt
                    break
                except (smtplib.SMTPException, OSError) as e:
                    errors.append("%s: %s" % (msgid, e))
                    smtp = None
                    time.sleep(1)
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        print("injection errors: %d, first: %s" % (len(errors), errors[0]), flush=True)
    return sent


# -- process figures ----------------------------------------------------------

def tcp_inodes():
    inodes = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "01":
                inodes.add(fields[9])
    return inodes


def proc_figures(pid, tcp):
    """RSS kB, descriptors, TCP connections, soft descriptor limit."""
    try:
        with open("/proc/%d/status" % pid) as f:
            rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        fds = os.listdir("/proc/%d/fd" % pid)
        conns = 0
        for fd in fds:
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in tcp:
                conns += 1
        with open("/proc/%d/limits" % pid) as f:
            lim = re.search(r"Max open files\s+(\S+)", f.read()).group(1)
    except (OSError, AttributeError):
        return None
    return {"rss_kb": rss, "fds": len(fds), "tcp": conns,
            "fd_limit": int(lim) if lim.isdigit() else None}


def snapshot(pf):
    tcp = tcp_inodes()
    out = {}
    for prog in ("tlsproxy", "scache", "smtp"):
        procs = {}
        for pid in pf.children(prog):
            f = proc_figures(pid, tcp)
            if f:
                procs[pid] = f
        out[prog] = {
            "processes": len(procs),
            "rss_kb": sum(p["rss_kb"] for p in procs.values()),
            "fds": sum(p["fds"] for p in procs.values()),
            "tcp": sum(p["tcp"] for p in procs.values()),
            "max_fds": max([p["fds"] for p in procs.values()] or [0]),
            "fd_limit": min([p["fd_limit"] for p in procs.values()
                             if p["fd_limit"]] or [0]) or None,
            "per_process": sorted(((p["tcp"], p["fds"], p["rss_kb"])
                                   for p in procs.values()), reverse=True),
        }
    return out


# -- one run ------------------------------------------------------------------

SENT_RE = re.compile(r"/smtp\[\d+\]: \w+: to=<([^>]*)>, .*status=(sent|deferred|bounced)")
DEATH_RE = re.compile(r"process \S+ pid \d+ (exit status|killed by signal)")


def wait_delivered(tail, rcv, counts, want, msgids, timeout, pf, log):
    """Follow the sender log until want status=sent lines; flush deferred
    mail now and then.  counts: running {status: n}."""
    deadline = time.time() + timeout
    last_flush = time.time()
    while time.time() < deadline:
        for line in tail.lines():
            m = SENT_RE.search(line)
            if m:
                counts[m.group(2)] += 1
        if counts["sent"] + counts["bounced"] >= want:
            break
        if counts["deferred"] and time.time() - last_flush > 20:
            pf.flush()
            last_flush = time.time()
        time.sleep(0.2)
    else:
        log("timed out: %s of %d" % (dict(counts), want))
    # The receiver's events catch up.
    deadline = time.time() + 30
    while time.time() < deadline:
        got = {e.get("msgid") for e in rcv.read() if e["ev"] == "message"}
        if msgids <= got:
            break
        time.sleep(0.2)


def wait_idle(rcv, want, timeout=60):
    """Until the receiver holds want open connections (all cached), or
    the count stops changing."""
    deadline = time.time() + timeout
    prev, stable = None, 0
    while time.time() < deadline:
        n = rcv.open_connections()
        if n >= want:
            break
        stable = stable + 1 if n == prev else 0
        if stable > 25:
            break
        prev = n
        time.sleep(0.2)
    time.sleep(1)
    return rcv.open_connections()


def run_one(n, flavour, log, extra_main=None):
    name = "w6-%s-%d" % (flavour, n)
    addrs = [address(i) for i in range(n)]
    base_addrs = [address(i, net=100) for i in range(BASELINE)]
    routes = {}
    for i, a in enumerate(addrs):
        routes["d%05d.w6.test" % i] = "[%s]:25" % a
    for i, a in enumerate(base_addrs):
        routes["b%05d.w6.test" % i] = "[%s]:25" % a
    route_of = {d: r[1:].split("]")[0] for d, r in routes.items()}

    with World(name, flavour=flavour) as w:
        rcv = ManyReceiver(w)
        w.things.append(rcv)
        hosts = os.path.join(w.dir, "cache-hosts")
        with open(hosts, "w") as f:
            f.write("\n".join(sorted(route_of.values())) + "\n")
        main = {
            "smtp_tls_CAfile": "",
            "smtp_connection_cache_destinations": hosts,
            "smtp_connection_cache_time_limit": "%ds" % CACHE_TIME,
            "smtp_tls_connection_cache_time_limit": "%ds" % CACHE_TIME,
            "connection_cache_ttl_limit": "%ds" % CACHE_TIME,
            "smtp_connection_reuse_time_limit": "%ds" % (2 * CACHE_TIME),
            "smtp_data_done_timeout": "%ds" % (2 * CACHE_TIME),
            "default_destination_concurrency_failed_cohort_limit": "10",
        }
        main.update(extra_main or {})
        snd = w.sender(routes, reuse=True, level="encrypt", flavour=flavour, tuned=False,
                       tlsproxy=True if flavour == "stock" else None, **main)
        if WRAP:
            # Run daemons through wrappers: W6_WRAP="scache:ulimit -n 600;
            # tlsproxy:export GLIBC_TUNABLES=..." (diagnostics, limits).
            wraps = {}
            for item in WRAP.split(";"):
                prog, _, body = item.strip().partition(":")
                wraps[prog] = body + '\n%s "$REAL" "$@"' % os.environ.get("W6_EXEC", "exec")
            snd.wrap_daemons(wraps)
        m_snd = bench.Metered(snd)
        w.things.append(m_snd)
        rcv.start()
        m_snd.start()
        tail = bench.LogTail(snd.maillog)
        tail.lines()
        counts = collections.Counter()
        res = {"n": n, "flavour": flavour, "dir": w.dir,
               "settings": {k: snd.postconf("-h", k).strip() for k in (
                   "default_process_limit", "max_use", "max_idle",
                   "connection_cache_ttl_limit", "smtp_tls_connection_reuse")}}
        res["settings"]["master.cf tlsproxy"] = [
            line for line in snd.postconf("-M").splitlines()
            if line.startswith("tlsproxy")]

        # Round 0: the baseline.
        sent0 = inject(snd.inject_port, ["u@b%05d.w6.test" % i for i in range(BASELINE)],
                       "r0")
        wait_delivered(tail, rcv, counts, BASELINE, set(sent0), 120, snd, log)
        wait_idle(rcv, BASELINE)
        res["baseline"] = snapshot(snd)
        mark0 = len(rcv.read())

        # Round 1: N new connections.
        t1 = time.time()
        sent1 = inject(snd.inject_port, ["u@d%05d.w6.test" % i for i in range(n)], "r1")
        wait_delivered(tail, rcv, counts, BASELINE + n, set(sent1), 300 + n * 0.5, snd, log)
        res["round1_seconds"] = time.time() - t1
        res["open_after_round1"] = wait_idle(rcv, BASELINE + n)
        res["after_round1"] = snapshot(snd)
        mark1 = len(rcv.read())
        if PAUSE:
            log("pausing %ds: tlsproxy %s scache %s" % (PAUSE, snd.children("tlsproxy"),
                                                       snd.children("scache")))
            time.sleep(PAUSE)
        log("%s N=%d round 1: %.0f s, %d connections open at the receiver"
            % (flavour, n, res["round1_seconds"], res["open_after_round1"]))

        # Round 2: the same N addresses again, while cached.
        table = bench.proc_table()
        cpu0, prog0 = m_snd.cpu_now(table), m_snd.programs_now(table)
        t2 = time.time()
        sent2 = inject(snd.inject_port, ["u@d%05d.w6.test" % i for i in range(n)], "r2")
        wait_delivered(tail, rcv, counts, BASELINE + 2 * n, set(sent2), 300 + n * 0.5,
                       snd, log)
        res["round2_seconds"] = time.time() - t2
        table = bench.proc_table()
        cpu1, prog1 = m_snd.cpu_now(table), m_snd.programs_now(table)
        res["open_after_round2"] = wait_idle(rcv, BASELINE + n, timeout=10)
        res["after_round2"] = snapshot(snd)
        evs = rcv.read()
        res["cpu_round2_s"] = cpu1 - cpu0
        res["cpu_round2_by_program"] = {k: round(v - prog0.get(k, 0.0), 3)
                                        for k, v in prog1.items()}
        r1 = evs[mark0:mark1]
        r2 = evs[mark1:]
        res["round1_handshakes"] = sum(1 for e in r1 if e["ev"] == "tls")
        res["round1_connections"] = sum(1 for e in r1 if e["ev"] == "connect")
        res["round2_handshakes"] = sum(1 for e in r2 if e["ev"] == "tls")
        res["round2_connections"] = sum(1 for e in r2 if e["ev"] == "connect")
        res["receiver_closes_before_round2_end"] = sum(1 for e in evs if e["ev"] == "close")
        m_snd.stop()
        rcv.stop()

        # Exactly once, to the right address, over TLS.
        msgs = [e for e in rcv.read() if e["ev"] == "message"]
        seen = collections.Counter(e["msgid"] for e in msgs)
        expected = {}
        for s in (sent0, sent1, sent2):
            expected.update(s)
        wrong = [e for e in msgs if e["msgid"] in expected
                 and route_of[expected[e["msgid"]].split("@")[1]] != e["addr"]]
        res["messages_expected"] = len(expected)
        res["messages_received"] = len(msgs)
        res["missing"] = sum(1 for m in expected if seen[m] == 0)
        res["duplicates"] = sum(c - 1 for c in seen.values() if c > 1)
        res["wrong_address"] = len(wrong)
        res["plaintext"] = sum(1 for e in msgs if not e["tls"])
        res["status"] = dict(counts)
        recs = snd.log_records()
        res["warnings"] = collections.Counter(
            "%s: %s" % (i.split("/")[-1], re.sub(r"\d+", "N", t)[:120])
            for i, _, t in recs if t.startswith("warning:")).most_common(20)
        res["fatal_panic"] = [t for _, _, t in recs
                              if t.startswith("fatal:") or t.startswith("panic:")][:20]
        res["deaths"] = [t for i, _, t in recs if i.endswith("master") and DEATH_RE.search(t)][:20]
        res["processes_seen"] = bench.processes_seen(snd)
        log("%s N=%d round 2: %.0f s, %d handshakes, %d connections; %d/%d received, "
            "%d missing, %d duplicates, %d fatal/panic, %d deaths"
            % (flavour, n, res["round2_seconds"], res["round2_handshakes"],
               res["round2_connections"], res["messages_received"],
               res["messages_expected"], res["missing"], res["duplicates"],
               len(res["fatal_panic"]), len(res["deaths"])))
        return res


# -- report -----------------------------------------------------------------

def figures(r):
    n = r["n"]
    b, a1, a2 = r["baseline"], r["after_round1"], r["after_round2"]
    tp1, sc1 = a1["tlsproxy"], a1["scache"]
    return {
        "tlsproxy_processes": tp1["processes"],
        "conns_per_process": "%.0f (max %d)" % (tp1["tcp"] / max(1, tp1["processes"]),
                                                max([p[0] for p in tp1["per_process"]] or [0])),
        "tlsproxy_kb_per_conn": (tp1["rss_kb"] - b["tlsproxy"]["rss_kb"]) / n,
        "tlsproxy_kb_per_conn_proc": (tp1["rss_kb"] - b["tlsproxy"]["rss_kb"]
                                      - (tp1["processes"] - b["tlsproxy"]["processes"])
                                      * b["tlsproxy"]["rss_kb"]
                                      / max(1, b["tlsproxy"]["processes"])) / n,
        "tlsproxy_kb_per_conn_r2": (a2["tlsproxy"]["rss_kb"] - b["tlsproxy"]["rss_kb"]) / n,
        "scache_kb_per_conn": (sc1["rss_kb"] - b["scache"]["rss_kb"]) / n,
        "tlsproxy_fds": "%d / %s" % (tp1["max_fds"], tp1["fd_limit"]),
        "scache_fds": "%d / %s" % (sc1["max_fds"], sc1["fd_limit"]),
        "cpu_ms_per_msg_r2": 1000.0 * r["cpu_round2_s"] / n,
        "cpu_split_r2": "/".join("%.2f" % (1000.0 * sum(
            r["cpu_round2_by_program"].get(p, 0) for p in ps) / n)
            for ps in (("smtp", "exited"), ("tlsproxy",), ("scache",))),
        "handshakes_r2": r["round2_handshakes"],
        "connections_r2": r["round2_connections"],
        "cached_after_r1": r["open_after_round1"] - BASELINE,
        "delivered": "%d/%d" % (r["messages_expected"] - r["missing"], r["messages_expected"]),
        "dup_missing_wrong": "%d/%d/%d" % (r["duplicates"], r["missing"], r["wrong_address"]),
        "errors": "%d/%d" % (len(r["fatal_panic"]), len(r["deaths"])),
        "warnings": sum(c for w, c in r["warnings"] if "TLS server role is disabled" not in w),
    }


COLUMNS = [
    ("tlsproxy_processes", "tlsproxy procs"),
    ("conns_per_process", "conns/proc"),
    ("tlsproxy_kb_per_conn", "tlsproxy KB/idle conn"),
    ("tlsproxy_kb_per_conn_proc", "same, new processes' baseline RSS excluded"),
    ("tlsproxy_kb_per_conn_r2", "tlsproxy KB/conn after r2"),
    ("scache_kb_per_conn", "scache KB/conn"),
    ("tlsproxy_fds", "tlsproxy fds (max proc) / limit"),
    ("scache_fds", "scache fds / limit"),
    ("cpu_ms_per_msg_r2", "sender CPU ms/msg r2"),
    ("cpu_split_r2", "smtp+exited/tlsproxy/scache ms/msg r2"),
    ("handshakes_r2", "handshakes r2"),
    ("connections_r2", "new conns r2"),
    ("cached_after_r1", "cached after r1"),
    ("delivered", "delivered"),
    ("dup_missing_wrong", "dup/missing/wrong addr"),
    ("errors", "fatal+panic/deaths"),
    ("warnings", "warnings (other than tlsproxy's server role)"),
]


def fmt(v):
    return "%.1f" % v if isinstance(v, float) else str(v)


def rerender(path):
    with open(os.path.join(path, "results.json")) as f:
        print(markdown(json.load(f)["results"]))


def markdown(results):
    out = ["| N | Postfix | " + " | ".join(c[1] for c in COLUMNS) + " |",
           "|---:|---|" + "---:|" * len(COLUMNS)]
    for r in results:
        f = figures(r)
        out.append("| %d | %s | %s |" % (r["n"], r["flavour"],
                                         " | ".join(fmt(f[k]) for k, _ in COLUMNS)))
    return "\n".join(out)


def in_netns():
    return os.environ.get("W6_NETNS") == "1"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", default="100,1000,5000")
    ap.add_argument("--flavours", default="stock,patched")
    ap.add_argument("--out")
    ap.add_argument("--nofile", type=int,
                    help="soft and hard descriptor limit for the senders (default: as "
                         "inherited)")
    ap.add_argument("--main", action="append", default=[], metavar="NAME=VALUE",
                    help="extra main.cf setting for the sender (repeatable)")
    ap.add_argument("--rerender", metavar="DIR", help="only print DIR's table again")
    args = ap.parse_args()
    # Unwind on SIGTERM as on Ctrl-C, so that every World stops what it started.
    signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(128 + sig))
    if args.rerender:
        return rerender(args.rerender)
    if not in_netns():
        env = dict(os.environ, W6_NETNS="1")
        os.execvpe("unshare", ["unshare", "-n", "sh", "-c",
                               'ip link set lo up && exec "$@"', "sh", PYTHON,
                               os.path.abspath(__file__)] + sys.argv[1:], env)
    if args.nofile:
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    outdir = os.path.abspath(args.out or os.path.join(HERE, "results", stamp + "-w6"))
    os.makedirs(outdir, exist_ok=True)
    logf = open(os.path.join(outdir, "w6.log"), "a")

    def log(text):
        line = "%s %s" % (time.strftime("%H:%M:%S"), text)
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    extra = dict(kv.split("=", 1) for kv in args.main)
    results, failed = [], []
    for n in [int(x) for x in args.n.split(",") if x]:
        for flavour in [x for x in args.flavours.split(",") if x]:
            try:
                results.append(run_one(n, flavour, log, extra))
            except Exception as e:
                failed.append("N=%d %s: %s" % (n, flavour, e))
                log("FAILED " + failed[-1])
            with open(os.path.join(outdir, "results.json"), "w") as f:
                json.dump({"results": results, "failed": failed, "extra_main": extra},
                          f, indent=1)
    table = markdown(results)
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write("# W6: thousands of cached TLS connections (%s)\n\n" % stamp)
        if extra:
            f.write("Extra sender settings: %s\n\n" % extra)
        f.write(table + "\n")
        if failed:
            f.write("\nFailed:\n\n" + "".join("- %s\n" % x for x in failed))
    print()
    print(table)
    log("results in %s" % outdir)
    bad = [r for r in results if r["missing"] or r["duplicates"] or r["wrong_address"]
           or r["fatal_panic"] or r["deaths"]]
    return 1 if failed or bad else 0


if __name__ == "__main__":
    sys.exit(main())
