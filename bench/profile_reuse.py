#!/usr/bin/python3
"""Where the instructions go on the TLS reuse path: smtp, tlsproxy, scache
under valgrind --tool=callgrind.

    /usr/bin/python3 bench/profile_reuse.py [--messages 200] [--flavour patched]
                     [--addresses 2] [--programs smtp,tlsproxy,scache]
                     [--reuse on|off]

The sender's smtp, tlsproxy and scache programs run through wrappers in a
daemon directory of its own ("exec valgrind --tool=callgrind ..."); every
other program is the installed one.  Load: --messages messages of ~10 KB,
round robin to 8 domains on 2 Postfix receiver addresses (127.0.3.61-62),
injected back to back, TLS level encrypt, reuse on, no CAfile (as in
bench.py).  --addresses N (more than 2) uses N receiver addresses from
127.0.4.1 on, one domain each, so that tlsproxy(8) holds about N connections
at once; --programs limits callgrind to some of the three programs (the
others run natively, which is much faster).  Instruction counts
(Ir) do not depend on machine noise.  Output: per program, total Ir, Ir per
delivered message, and the top functions (inclusive of nothing: self cost),
written to bench/results/profile-<UTC time>/profile.md.
"""

import argparse
import glob
import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from harness import mailgen                         # noqa: E402
from harness.world import World, wait_for           # noqa: E402

ADDRS = ["127.0.3.61", "127.0.3.62"]
DOMAINS = ["p%d.test" % i for i in range(8)]
PROGRAMS = ["smtp", "tlsproxy", "scache"]
# The rest of the sender: the same work with reuse on and off (--programs all).
# qmgr is not among them: the test harness recognizes a started instance by
# its qmgr process, which under valgrind has another name.
OTHERS = ["smtpd", "cleanup", "trivial-rewrite", "postlogd"]


def world_layout(n):
    """Receiver addresses and domains for --addresses n."""
    if n <= 2:
        return ADDRS[:max(n, 1)], DOMAINS
    if n > 254:
        sys.exit("--addresses: at most 254")
    addrs = ["127.0.4.%d" % i for i in range(1, n + 1)]
    return addrs, ["p%d.test" % i for i in range(n)]


def wrap(s, outdir, programs):
    os.makedirs(outdir)
    os.chmod(outdir, 0o1777)
    # The daemon drops privileges before callgrind writes its output at
    # exit: the file must exist and be writable by then.
    s.wrap_daemons({p: 'out=%s/%s.$$.out\n: > $out\nchmod 666 $out\n'
                       'exec %s --tool=callgrind --callgrind-out-file=$out "$REAL" "$@"'
                       % (outdir, p, shutil.which("valgrind")) for p in programs})


def annotate(files):
    """Sum self Ir per function, and per object (program or library), over
    callgrind output files (the self-cost table of callgrind_annotate)."""
    total, funcs, objs = 0, {}, {}
    for f in files:
        out = subprocess.run(["callgrind_annotate", "--threshold=100",
                              "--auto=no", f],
                             capture_output=True, text=True).stdout
        m = re.search(r"^([\d,]+) \(100\.0+%\)\s+PROGRAM TOTALS", out, re.M)
        if m:
            total += int(m.group(1).replace(",", ""))
        section = out.split("file:function", 1)[-1].split("\n", 2)[-1]
        for line in section.splitlines():
            m = re.match(r"^\s*([\d,]+) \([ \d.]+%\)\s+(\S+?)(?: \[(.*)\])?$", line)
            if not m:
                continue
            ir = int(m.group(1).replace(",", ""))
            name = m.group(2).rsplit(":", 1)[-1]
            obj = os.path.basename(m.group(3) or "?")
            if name.startswith("0x"):
                name = "(unnamed)"
            key = "%s (%s)" % (name, obj)
            funcs[key] = funcs.get(key, 0) + ir
            objs[obj] = objs.get(obj, 0) + ir
    return (total, sorted(funcs.items(), key=lambda kv: -kv[1]),
            sorted(objs.items(), key=lambda kv: -kv[1]))


# Per program, the function whose inclusive cost is the per-delivery work
# (the rest is process start-up, configuration and exit).
SERVICE = {"smtp": "smtp_service", "tlsproxy": "event_loop", "scache": "event_loop",
           "smtpd": "smtpd_service", "cleanup": "cleanup_service", "qmgr": "event_loop",
           "trivial-rewrite": "rewrite_service", "postlogd": "postlogd_service"}


def inclusive(files, function):
    """Sum of function's inclusive Ir over callgrind output files."""
    total = 0
    for f in files:
        out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
                              "--auto=no", f], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.match(r"^\s*([\d,]+) \([ \d.]+%\)\s+\S*:" + re.escape(function) + r" \[",
                         line)
            if m:
                total += int(m.group(1).replace(",", ""))
                break
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--flavour", default="patched")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", help="results directory (default "
                    "bench/results/profile-<UTC time>)")
    ap.add_argument("--reuse", choices=["on", "off"], default="on",
                    help="smtp_tls_connection_reuse (off: smtp does the TLS itself; "
                         "compare smtp alone with smtp+tlsproxy+scache of reuse on)")
    ap.add_argument("--addresses", type=int, default=2,
                    help="receiver addresses (default 2; more: one domain each)")
    ap.add_argument("--programs", default=",".join(PROGRAMS),
                    help="comma-separated subset of %s, or all (also %s: "
                    "the whole sender but its master and qmgr)" % (",".join(PROGRAMS), ",".join(OTHERS)))
    args = ap.parse_args()
    if args.programs == "all":
        programs = PROGRAMS + OTHERS
    else:
        programs = [p for p in PROGRAMS + OTHERS if p in args.programs.split(",")]
    if not programs:
        sys.exit("--programs: none of %s (or all)" % ",".join(PROGRAMS + OTHERS))
    addrs, domains = world_layout(args.addresses)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    results = args.out or os.path.join(HERE, "results", "profile-%s" % stamp)

    with World("profile_reuse") as w:
        r = w.postfix_receiver("mx", addrs)
        s = w.sender({d: "[%s]:25" % addrs[i % len(addrs)] for i, d in enumerate(domains)},
                     reuse=(args.reuse == "on"), flavour=args.flavour, tuned=False,
                     smtp_starttls_timeout="120s", smtp_tls_CAfile="")
        outdir = os.path.join(s.base, "callgrind")
        wrap(s, outdir, programs)
        w.start()
        with smtplib.SMTP("127.0.0.1", s.inject_port, timeout=120) as smtp:
            for k in range(args.messages):
                rcpt = "user%d@%s" % (k, domains[k % len(domains)])
                msgid, data = mailgen.simple(rcpt, "prof", k)
                data += b"x" * 10000 + b"\r\n"
                smtp.sendmail("tester@sender.test", [rcpt], data)
        wait_for(lambda: r.counts().messages >= args.messages, 900,
                 "%d messages" % args.messages, interval=2)
        c = r.counts()
        s.stop()
        time.sleep(2)
        os.makedirs(results)
        lines = ["# Callgrind profile of the TLS reuse path (%s)" % args.flavour, "",
                 "%d messages of ~10 KB to %d domains on %d receiver addresses, burst, "
                 "TLS level encrypt, reuse %s; receiver counted %d connections, "
                 "%d handshakes." % (args.messages, len(domains), len(addrs), args.reuse,
                                     c.connections, c.handshakes), ""]
        summary, detail = [], []
        for p in programs:
            files = glob.glob(os.path.join(outdir, "%s.*.out" % p))
            total, funcs, objs = annotate(files)
            service = inclusive(files, SERVICE[p])
            summary.append((p, len(files), total, service))
            detail += ["## %s: %d processes, %.1f M instructions, %.2f M per message"
                       % (p, len(files), total / 1e6, total / 1e6 / args.messages), "",
                       "Of which in %s() (serving requests, not process start-up): "
                       "%.2f M per message; the rest, %.1f M per process, is start-up, "
                       "configuration and exit." % (
                           SERVICE[p], service / 1e6 / args.messages,
                           (total - service) / 1e6 / max(len(files), 1)),
                       "",
                       "By object: " + ", ".join("%s %.0f%%" % (o, 100.0 * ir / max(total, 1))
                                                 for o, ir in objs[:6]), "",
                       "| self Ir (M) | % | function |", "|---:|---:|---|"]
            for name, ir in funcs[:args.top]:
                detail.append("| %.1f | %.1f | `%s` |" % (ir / 1e6, 100.0 * ir / max(total, 1),
                                                         name))
            detail.append("")
        lines += ["| program | processes | M instructions per message | of which serving "
                  "requests | start-up and exit, M per process |", "|---|---:|---:|---:|---:|"]
        for p, n, total, service in summary:
            lines.append("| %s | %d | %.2f | %.2f | %.1f |" % (
                p, n, total / 1e6 / args.messages, service / 1e6 / args.messages,
                (total - service) / 1e6 / max(n, 1)))
        lines += ["| all profiled | %d | %.2f | %.2f | |" % (
            sum(x[1] for x in summary), sum(x[2] for x in summary) / 1e6 / args.messages,
            sum(x[3] for x in summary) / 1e6 / args.messages), ""] + detail
        with open(os.path.join(results, "results.json"), "w") as f:
            json.dump({"messages": args.messages, "addresses": len(addrs),
                       "reuse": args.reuse, "flavour": args.flavour,
                       "connections": c.connections, "handshakes": c.handshakes,
                       "programs": {p: {"processes": n, "ir": total, "service_ir": service}
                                    for p, n, total, service in summary}}, f, indent=1)
    with open(os.path.join(results, "profile.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print("written to %s" % results)


if __name__ == "__main__":
    main()
