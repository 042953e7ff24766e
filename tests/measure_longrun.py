#!/usr/bin/python3
"""Long run with TLS reuse on: does tlsproxy(8) stay flat in memory and
descriptors?

    /usr/bin/python3 tests/measure_longrun.py [--minutes 10] [--messages 20000]
    make longrun            (the same, with the defaults)

A patched sender (reuse on, level encrypt) sends --messages messages, evenly
spread over --minutes, round robin to 40 domains on 4 Postfix receiver
addresses (127.0.0.40-43).  Every 5 s it samples every tlsproxy process of
the sender: resident memory (VmRSS) and open descriptors (/proc/<pid>/fd),
and the number of connections cached in between.  At the end it prints the
samples and compares the last third of the run with the middle third:
memory and descriptors must not grow (a 10% margin for RSS, allocator
noise), every message must arrive exactly once, none in plaintext.  Exit
status 0 when all holds.  Logs stay in build/<base>/run/measure_longrun/.
"""

import argparse
import os
import smtplib
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import mailgen                         # noqa: E402
from harness.world import World, wait_for           # noqa: E402

ADDRS = ["127.0.0.40", "127.0.0.41", "127.0.0.42", "127.0.0.43"]
DOMAINS = ["l%02d.test" % i for i in range(40)]


def proc_sample(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        fds = len(os.listdir("/proc/%d/fd" % pid))
        return rss, fds
    except (OSError, StopIteration):
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--messages", type=int, default=20000)
    args = ap.parse_args()

    with World("measure_longrun") as w:
        r = w.postfix_receiver("mx", ADDRS)
        s = w.sender({d: "[%s]:25" % ADDRS[i % 4] for i, d in enumerate(DOMAINS)},
                     reuse=True, tuned=False)
        w.start()
        samples = []
        done = threading.Event()

        def sampler():
            t0 = time.time()
            while not done.is_set():
                for pid in s.children("tlsproxy"):
                    v = proc_sample(pid)
                    if v:
                        samples.append((time.time() - t0, pid, v[0], v[1]))
                done.wait(5)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        interval = args.minutes * 60 / args.messages
        ids = []
        start = time.time()
        k = 0
        while k < args.messages:
            with smtplib.SMTP("127.0.0.1", s.inject_port, timeout=60) as smtp:
                for _ in range(50):
                    if k >= args.messages:
                        break
                    rcpt = "user%d@%s" % (k, DOMAINS[k % len(DOMAINS)])
                    msgid, data = mailgen.simple(rcpt, "long", k)
                    smtp.sendmail("tester@sender.test", [rcpt], data)
                    ids.append(msgid)
                    k += 1
                    delay = start + k * interval - time.time()
                    if delay > 0:
                        time.sleep(delay)
        wait_for(lambda: r.counts().messages >= len(ids), 600,
                 "%d messages" % len(ids), interval=2)
        time.sleep(5)
        done.set()
        th.join()
        c = r.counts()
        got = r.message_ids()

    print("elapsed %.0f s; %d sent, %d received (%d distinct), %d plaintext, "
          "%d connections, %d handshakes"
          % (time.time() - start, len(ids), len(got), len(set(got)),
             c.plaintext_messages, c.connections, c.handshakes))
    print("%8s %8s %10s %6s" % ("t (s)", "pid", "RSS (kB)", "fds"))
    for t, pid, rss, fds in samples:
        print("%8.0f %8d %10d %6d" % (t, pid, rss, fds))
    ok = sorted(got) == sorted(ids) and c.plaintext_messages == 0
    by_pid = {}
    for t, pid, rss, fds in samples:
        by_pid.setdefault(pid, []).append((t, rss, fds))
    for pid, rows in by_pid.items():
        n = len(rows)
        if n < 9:
            continue
        mid, last = rows[n // 3: 2 * n // 3], rows[2 * n // 3:]
        rss_mid = max(x[1] for x in mid)
        rss_last = max(x[1] for x in last)
        fd_mid = max(x[2] for x in mid)
        fd_last = max(x[2] for x in last)
        flat = rss_last <= rss_mid * 1.10 and fd_last <= fd_mid + 4
        print("tlsproxy %d: RSS max %d kB (middle third) -> %d kB (last third); "
              "fds max %d -> %d: %s" % (pid, rss_mid, rss_last, fd_mid, fd_last,
                                        "flat" if flat else "GROWS"))
        ok = ok and flat
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
