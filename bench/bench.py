#!/usr/bin/python3
"""make bench: stock and patched Postfix, TLS connection reuse off and on.

    /usr/bin/python3 bench/bench.py [--quick] [--repeat N] [--workloads W1,W3]
                                    [--out DIR] [--patched NAME]

--patched NAME runs the patched configurations with build/<base>/inst/NAME
(for example an earlier state of the series, "scripts/build NAME=REV"), so
that two states of the series can be compared, each beside stock.

Five sender configurations run the same workloads against the same kind of
receivers, one after the other on this machine:

    stock   3.10.13, smtp_tls_connection_reuse = no   (the baseline)
    stock   3.10.13, smtp_tls_connection_reuse = yes
    patched,         smtp_tls_connection_reuse = no
    patched,         smtp_tls_connection_reuse = yes
    stock   3.10.13, smtp_tls_security_level = none  (the floor: the same
                     mail without any TLS, which no TLS configuration can
                     beat; its plaintext is expected)

Every connection cache setting is Postfix's default (the harness's
tuned=False); TLS level encrypt, without smtp_tls_CAfile (level encrypt
verifies no certificate; Debian's main.cf has a CApath only).  With a
CAfile, patched smtp(8) creates its in-process TLS engine at start-up as
stock does, also with reuse on, and loses that patch's gain.  Stock gets its tlsproxy service enabled in
master.cf for both of its runs (it is unused with reuse off, and stock
defers all TLS mail with reuse on without it); patched keeps its installed
master.cf, which already enables tlsproxy.

Workloads (full / --quick message counts):

    W1 spaced   20 / 6 messages of ~10 KB to one destination, injected
                3 s apart, one SMTP session each
    W2 shared   2000 / 200 messages of ~10 KB to 100 domains on 4 receiver
                addresses, injected as fast as the sender accepts them
                (4 SMTP sessions in parallel; so are W3 and W4)
    W3 large    200 / 20 messages of 1 MB to 4 domains on 2 addresses
    W4 spread   500 / 50 messages of ~10 KB to as many domains, each on its
                own receiver address (nothing can be shared)
    W6 many     only when named in --workloads: bench/w6_many.py, N = 100,
                1000 (--quick: 100) cached TLS connections at once, stock
                and patched reuse on; its tables go to <results>/w6/

A full bench runs W1 once and W2-W4 three times per configuration and shows
the median; --quick runs each once; --repeat N sets the runs for all.

Each (workload, configuration) pair gets a fresh world: a new test CA, one
Postfix receiver instance (stock flavour) listening on all the workload's
addresses, and the sender.  Both instances run their master in the
foreground under cpuwrap.py, which reports the CPU time of every process of
the instance when it stops.  Figures, per 1000 delivered messages where
that makes sense:

    handshakes, connections  TLS handshakes and TCP connections counted in the
                             receiver's log
    msg/s                    delivered messages / time from the first
                             injection to the last status=sent in the sender
                             log (seen by polling the log every 0.1 s)
    sender / receiver CPU    user+system seconds of all processes of that
                             instance from just before the first injection
                             until it has stopped (start-up excluded)
    p50 / p99 latency        of the delay= field of the sender's status=sent
                             lines (arrival to delivery, two significant
                             digits as Postfix logs it)

The workloads run in order, and within a workload the five configurations
run back to back (each repetition starting with the next one), so that load
from elsewhere on the machine falls on all five alike.  Results go to
bench/results/<UTC time>[-quick]/: results.md (tables), results.json
(every run, everything measured), chart.png (+ chart.gp, chart.dat),
machine.txt, bench.log.  Each run's Postfix files stay in
build/<base>/run/bench-<workload>-<flavour>-reuse-<on|off>-<run>/.
The exit status is 0 when every run delivered every message over TLS.
"""

import argparse
import base64
import datetime
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))

from harness.base import BASE, INST, POSTFIX_VERSION, make_hint  # noqa: E402
from harness.postfix import installed        # noqa: E402
from harness.proc import pids, proc_stat     # noqa: E402
from harness.world import World              # noqa: E402

PYTHON = "/usr/bin/python3"
CPUWRAP = os.path.join(HERE, "cpuwrap.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# reuse None: TLS off altogether (level none), the floor that no TLS
# configuration can go below: what delivering the same mail costs without
# any TLS.
CONFIGS = [("stock", False), ("stock", True), ("patched", False), ("patched", True),
           ("stock", None)]


# The installation that the "patched" configurations run (--patched NAME:
# build/<base>/inst/NAME, for example an earlier state of the series built
# with "scripts/build NAME=REV", for an A/B of patches with the same
# labels and stock beside it).
PATCHED = {"name": "patched"}


def inst_name(flavour):
    return PATCHED["name"] if flavour == "patched" else flavour


def config_label(flavour, reuse):
    if reuse is None:
        return "%s no TLS (floor)" % flavour
    return "%s reuse %s" % (flavour, "on" if reuse else "off")


# -- workloads ------------------------------------------------------------

@dataclass
class Workload:
    key: str
    title: str
    messages: int
    size: int           # approximate message size in bytes
    domains: list
    addresses: list     # receiver addresses; domain i goes to address i % len
    spacing: float = 0  # seconds between injections (one session each)
    threads: int = 4    # concurrent injecting SMTP sessions when not spaced
    runs: int = 1       # runs per configuration; the tables show the median

    def routes(self):
        return {d: "[%s]:25" % self.addresses[i % len(self.addresses)]
                for i, d in enumerate(self.domains)}

    def timeout(self):
        """Bound on the wait for the last delivery after injection starts."""
        return self.messages * self.spacing + 120 + 0.2 * self.messages


def w4_addresses(n):
    """n distinct receiver addresses from 127.0.4.0/24 and 127.0.5.0/24."""
    pool = ["127.0.%d.%d" % (net, host) for net in (4, 5) for host in range(1, 255)]
    if n > len(pool):
        raise ValueError("W4 needs %d addresses, only %d available" % (n, len(pool)))
    return pool[:n]


def workloads(quick, repeat=None):
    """The four workloads.  A full bench runs the short ones (W2-W4) three
    times per configuration, since one run of a few seconds varies by 5 to
    15 %; W1 takes a minute per run and counts what it is about exactly."""
    def pick(full, small):
        return small if quick else full
    n4 = pick(500, 50)
    runs = repeat or pick(3, 1)
    return [
        Workload("W1", "spaced", pick(20, 6), 10 * 1024, ["w1.test"],
                 ["127.0.3.1"], spacing=3, threads=1, runs=repeat or 1),
        Workload("W2", "shared receivers", pick(2000, 200), 10 * 1024,
                 ["w2-d%03d.test" % i for i in range(100)],
                 ["127.0.3.%d" % a for a in range(11, 15)], runs=runs),
        Workload("W3", "large", pick(200, 20), 1024 * 1024,
                 ["w3-d%d.test" % i for i in range(4)],
                 ["127.0.3.21", "127.0.3.22"], runs=runs),
        Workload("W4", "no sharing possible", n4, 10 * 1024,
                 ["w4-d%03d.test" % i for i in range(n4)], w4_addresses(n4), runs=runs),
    ]


# -- messages and injection ---------------------------------------------

_bodies = {}


def body(size):
    """A text body of about size bytes: base64 lines of random bytes
    (incompressible, so TLS has to move every byte)."""
    if size not in _bodies:
        raw = random.Random(size).randbytes(size * 3 // 4)
        _bodies[size] = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    return _bodies[size]


def message(rcpt, tag, i, size):
    head = ("From: bench@sender.test\r\nTo: %s\r\nSubject: %s message %d\r\n"
            "Message-ID: <%s.%d.%s@sender.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain\r\n\r\n"
            % (rcpt, tag, i, tag, i, os.urandom(6).hex()))
    return head.encode() + body(size)


class Injector:
    """Sends a workload's messages to the sender's injection port.

    Spaced workloads use one SMTP session per message, like the harness's
    World.send; the others use several sessions in parallel, each taking the
    next message as soon as its previous one was accepted."""

    def __init__(self, port, wl, tag):
        self.port = port
        self.wl = wl
        self.tag = tag
        self.next = 0
        self.lock = threading.Lock()
        self.accepted = 0
        self.errors = []
        self.done = None                # time the last message was accepted

    def _take(self):
        with self.lock:
            if self.next >= self.wl.messages:
                return None
            i = self.next
            self.next += 1
            return i

    def _rcpt(self, i):
        return "user%d@%s" % (i, self.wl.domains[i % len(self.wl.domains)])

    def _send_one(self, smtp, i):
        rcpt = self._rcpt(i)
        smtp.sendmail("bench@sender.test", [rcpt],
                      message(rcpt, self.tag, i, self.wl.size))
        with self.lock:
            self.accepted += 1
            self.done = time.time()

    def _worker(self):
        smtp = None
        try:
            while True:
                i = self._take()
                if i is None:
                    break
                for attempt in range(3):
                    try:
                        if smtp is None:
                            smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=120)
                        self._send_one(smtp, i)
                        break
                    except (smtplib.SMTPException, OSError) as e:
                        self.errors.append("message %d attempt %d: %s" % (i, attempt, e))
                        try:
                            if smtp is not None:
                                smtp.close()
                        except OSError:
                            pass
                        smtp = None
                        time.sleep(1)
        finally:
            if smtp is not None:
                try:
                    smtp.quit()
                except (smtplib.SMTPException, OSError):
                    smtp.close()

    def run(self):
        """Inject everything; returns when the last message was accepted."""
        if self.wl.spacing:
            for i in range(self.wl.messages):
                if i:
                    time.sleep(self.wl.spacing)
                with smtplib.SMTP("127.0.0.1", self.port, timeout=120) as smtp:
                    self._send_one(smtp, i)
            return
        threads = [threading.Thread(target=self._worker, daemon=True)
                   for _ in range(self.wl.threads)]
        for t in threads:
            t.start()
        deadline = time.time() + self.wl.timeout()
        for t in threads:
            t.join(max(1, deadline - time.time()))
        if any(t.is_alive() for t in threads):
            raise RuntimeError("injection did not finish in %ds" % self.wl.timeout())


# -- CPU accounting ---------------------------------------------------------

def proc_table():
    """{pid: (ppid, own CPU seconds, waited-for children's CPU seconds, name)}.

    A process's own time comes from /proc/PID/schedstat (nanoseconds, the
    same clock that getrusage() reports after it exits).  The utime/stime of
    /proc/PID/stat are whole clock ticks, truncated: summed over dozens of
    live daemons that loses about 10 ms per process.  Children's time exists
    only in ticks (cutime/cstime), truncated once per parent."""
    table = {}
    for pid in pids():
        st = proc_stat(pid)
        try:
            with open("/proc/%d/schedstat" % pid) as f:
                own = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
        if st is None:
            continue
        # utime is fields[11], stime 12, cutime 13, cstime 14.
        name, f = st
        table[pid] = (int(f[1]), own, (int(f[13]) + int(f[14])) / CLK_TCK, name)
    return table


def descendants(root, table):
    kids = {}
    for pid, v in table.items():
        kids.setdefault(v[0], []).append(pid)
    found, todo = [], list(kids.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(kids.get(pid, []))
    return found


def tree_cpu(root, table=None):
    """CPU seconds used so far by every descendant of root: the running ones'
    own time plus what has been waited for (root's own time excluded)."""
    table = table or proc_table()
    if root not in table:
        return None
    return table[root][2] + sum(table[p][1] + table[p][2] for p in descendants(root, table))


def cpu_by_program(root, table):
    """{program: CPU seconds} of the processes below root that are still
    running (Postfix daemons mostly live until the stop); the time of those
    that already exited is under "exited"."""
    out = {}
    for pid in descendants(root, table):
        _, own, children, name = table[pid]
        out[name] = out.get(name, 0.0) + own
        out["exited"] = out.get("exited", 0.0) + children
    return out


def machine_busy():
    """CPU seconds all CPUs of the machine spent not idle, since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest is inside user)
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


def self_cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Metered:
    """Runs a harness Postfix instance with "postfix start-fg" under
    cpuwrap.py, so that all of its processes' CPU time is known when it
    stops.  The harness object keeps its configuration and its stop();
    this only replaces how the master is started."""

    def __init__(self, pf):
        self.pf = pf
        self.name = pf.name + " (start-fg)"
        self.out = os.path.join(pf.base, "cpu.json")
        self.proc = None
        self.rusage = None

    def start(self):
        pf = self.pf
        pf.prepare()
        if os.path.exists(self.out):
            os.unlink(self.out)
        argv = [PYTHON, CPUWRAP, self.out, "--", pf.cmd("postfix"), "-c", pf.conf,
                "start-fg"]
        # From here on the harness's stop() must try "postfix stop".
        pf.running = True
        # Hold off SIGTERM/SIGINT until self.proc is set, so that an
        # interrupted bench always knows the wrapper it must stop (cpuwrap
        # clears the inherited signal mask for Postfix).
        held = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            with open(os.path.join(pf.base, "start-fg.log"), "ab") as log:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=log, start_new_session=True)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
        deadline = time.time() + 30
        while time.time() < deadline:
            if pf.master_pid() and pf.children("qmgr") and pf.children("pickup"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("%s: start-fg did not bring up master, qmgr and pickup\n%s"
                           % (self.pf.name, self.pf.log_tail()))

    def cpu_now(self, table=None):
        """CPU seconds of the instance so far, sampled from /proc."""
        return tree_cpu(self.proc.pid, table) if self.proc else None

    def programs_now(self, table):
        return cpu_by_program(self.proc.pid, table) if self.proc else {}

    def stop(self):
        if self.proc is None:
            return
        # A start that was interrupted early may not have written the
        # master's pid file yet; "postfix stop" needs it.
        deadline = time.time() + 5
        while self.proc.poll() is None and not self.pf.master_pid() \
                and time.time() < deadline:
            time.sleep(0.1)
        self.pf.running = True
        self.pf.stop()
        try:
            # cpuwrap itself waits up to 30 s for stragglers, then kills them.
            self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self._kill_tree()
        self.proc = None
        try:
            with open(self.out) as f:
                self.rusage = json.load(f)
        except (OSError, ValueError):
            self.rusage = None

    def _kill_tree(self):
        """SIGKILL the wrapper and everything below it (last resort)."""
        table = proc_table()
        for pid in [self.proc.pid] + descendants(self.proc.pid, table):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.wait(10)

    def total_cpu(self):
        """CPU seconds of every process the instance ever ran (after stop)."""
        if not self.rusage:
            return None
        return self.rusage["utime"] + self.rusage["stime"]


# -- concurrent connections -----------------------------------------------

class ConnectionPeaks:
    """The largest number of established TCP connections seen at each
    receiver address (local port 25 in /proc/net/tcp), sampled by the
    caller.  Every connection that is open at the same time as another to
    the same address needs its own TLS handshake, so the sum over the
    addresses of these peaks is a floor for the handshake count.  Sampling
    can miss a short peak: the floor can only be underestimated."""

    def __init__(self, addresses, port=25):
        self.want = {"%08X:%04X" % (int.from_bytes(socket.inet_aton(a), "little"), port): a
                     for a in addresses}
        self.peak = dict.fromkeys(addresses, 0)

    def sample(self):
        now = {}
        seen = set()
        try:
            with open("/proc/net/tcp") as f:
                next(f)
                for line in f:
                    fields = line.split(None, 4)
                    # local_address rem_address st; 01 is ESTABLISHED.  The
                    # kernel produces the table in pieces, while sockets come
                    # and go: the same connection can appear twice in one
                    # read, so count each (local, remote) pair once.
                    if fields[3] == "01" and fields[1] in self.want \
                            and (fields[1], fields[2]) not in seen:
                        seen.add((fields[1], fields[2]))
                        a = self.want[fields[1]]
                        now[a] = now.get(a, 0) + 1
        except OSError:
            return
        for a, n in now.items():
            if n > self.peak[a]:
                self.peak[a] = n

    def total(self):
        return sum(self.peak.values())

    def highest(self):
        """The peak at the busiest receiver address: what a receiver that
        limits connections per sending IP (Microsoft's "451 4.7.652 ...
        exceeded the maximum number of connections") sees."""
        return max(self.peak.values()) if self.peak else 0


class MemoryPeak:
    """The largest total memory of the sender's processes seen while mail
    is delivered, sampled by the caller: the sum of every process's
    proportional set size (Pss in /proc/PID/smaps_rollup): a page that
    several processes map (libcrypto, the program text of many smtp
    processes) is divided among them, instead of counting once per process.
    Also the peak of the delivery agents that reuse adds or changes (smtp,
    tlsproxy, scache), by program."""

    def __init__(self, metered):
        self.metered = metered
        self.peak_kb = 0
        self.peak_programs_kb = {}

    @staticmethod
    def pss_kb(pid):
        try:
            with open("/proc/%d/smaps_rollup" % pid) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def sample(self, table):
        root = self.metered.proc.pid if self.metered.proc else None
        if root is None or root not in table:
            return
        total, programs = 0, {}
        for pid in descendants(root, table):
            kb = self.pss_kb(pid)
            total += kb
            name = table[pid][3]
            if name in DELIVERY_PROGRAMS:
                programs[name] = programs.get(name, 0) + kb
        self.peak_kb = max(self.peak_kb, total)
        for name, kb in programs.items():
            if kb > self.peak_programs_kb.get(name, 0):
                self.peak_programs_kb[name] = kb


# -- logs ---------------------------------------------------------------

class LogTail:
    """New complete lines of a growing file, read incrementally."""

    def __init__(self, path):
        self.path = path
        self.pos = 0
        self.rest = ""

    def lines(self):
        try:
            with open(self.path, errors="replace") as f:
                f.seek(self.pos)
                data = f.read()
                self.pos = f.tell()
        except FileNotFoundError:
            return []
        data = self.rest + data
        parts = data.split("\n")
        self.rest = parts.pop()
        return parts


SENT_RE = re.compile(r" \S+/smtp\[\d+\]: (\w+): to=<[^>]*>, .*status=(sent|deferred|bounced)")
DELAY_RE = re.compile(r", delay=([\d.]+), delays=([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+),")


def percentile(values, p):
    """Nearest-rank percentile of a list (p in 0..100)."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k]


def delivery_stats(sender):
    """Latency and connection figures from the sender's status=sent lines."""
    delays, parts = [], [[], [], [], []]
    conn_use = 0
    for text in sender.grep(r"status=sent", ident="smtp"):
        m = DELAY_RE.search(text)
        if m:
            delays.append(float(m.group(1)))
            for k in range(4):
                parts[k].append(float(m.group(k + 2)))
        if "conn_use=" in text:
            conn_use += 1
    mean = [sum(p) / len(p) if p else None for p in parts]
    return {
        "delay_p50": percentile(delays, 50),
        "delay_p99": percentile(delays, 99),
        "delay_max": max(delays) if delays else None,
        "delays_mean_before_qmgr_in_qmgr_conn_xmit": mean,
        "deliveries_on_reused_connection": conn_use,
        "tls_established_logged_by_smtp": len(sender.grep(
            r"TLS connection established to", ident="smtp")),
        "tls_reused_logged_by_smtp": len(sender.grep(
            r"TLS connection reused to", ident="smtp")),
    }


# -- one run ------------------------------------------------------------

def run_one(wl, flavour, reuse, run, log):
    name = "bench-%s-%s-reuse-%s-%d" % (wl.key.lower(), flavour, "on" if reuse else "off",
                                        run)
    label = config_label(flavour, reuse)
    with World(name, flavour=inst_name(flavour)) as w:
        rcv = w.postfix_receiver("mx", wl.addresses)
        snd = w.sender(wl.routes(), reuse=bool(reuse),
                       level="none" if reuse is None else "encrypt",
                       flavour=inst_name(flavour),
                       tuned=False, tlsproxy=True if flavour == "stock" else None,
                       smtp_tls_CAfile="")
        # Started in this order, stopped in the reverse: sender first.
        m_rcv, m_snd = Metered(rcv), Metered(snd)
        w.things += [m_rcv, m_snd]
        m_rcv.start()
        m_snd.start()

        tail = LogTail(snd.maillog)
        tail.lines()                    # skip start-up lines
        table = proc_table()
        ready = {"sender": m_snd.cpu_now(table), "receiver": m_rcv.cpu_now(table)}
        ready_programs = m_snd.programs_now(table)
        busy0, self0 = machine_busy(), self_cpu()
        load0 = os.getloadavg()[0]

        t0 = time.time()
        inj = Injector(snd.inject_port, wl, name)
        inj_exc = []
        inj_thread = threading.Thread(target=_catch, args=(inj.run, inj_exc), daemon=True)
        inj_thread.start()

        peaks = ConnectionPeaks(wl.addresses)
        memory = MemoryPeak(m_snd)
        status = {}                     # queue id -> last status seen
        sent = bounced = 0
        t_last = None
        deadline = t0 + wl.timeout()
        last_flush = time.time()
        memory_at = 0.0
        while time.time() < deadline:
            for line in tail.lines():
                m = SENT_RE.search(line)
                if not m:
                    continue
                qid, st = m.groups()
                if st == "sent":
                    sent += 1
                    t_last = time.time()
                elif st == "bounced":
                    bounced += 1
                status[qid] = st
            peaks.sample()
            # Memory once a second (smaps_rollup walks page tables).
            if time.time() - memory_at >= 1.0:
                memory.sample(proc_table())
                memory_at = time.time()
            if sent + bounced >= wl.messages:
                break
            if inj_exc:
                break
            # Deferred mail waits minutes for a retry: once nothing else is
            # pending, ask for the retry now (and report the deferral).
            waiting = sum(1 for s in status.values() if s == "deferred")
            if (waiting and not inj_thread.is_alive() and time.time() - last_flush > 10
                    and sent + bounced + waiting >= wl.messages):
                snd.flush()
                last_flush = time.time()
            time.sleep(0.1)
        inj_thread.join(5)
        if inj_exc:
            raise inj_exc[0]
        table = proc_table()
        memory.sample(table)
        end = {"sender": m_snd.cpu_now(table), "receiver": m_rcv.cpu_now(table)}
        end_programs = m_snd.programs_now(table)
        busy1, self1 = machine_busy(), self_cpu()
        # The receiver logs a message before the sender logs status=sent,
        # but through its own postlogd: let its log catch up.
        deadline = time.time() + 10
        while received(rcv) < sent and time.time() < deadline:
            time.sleep(0.2)
        m_snd.stop()
        m_rcv.stop()

        # Count at the receiver from one read of its log: W4 has 500
        # listeners, and counts() reads the log once per listener, so the
        # instance's log_records() is shadowed by the list read here.
        records = rcv.log_records()
        rcv.log_records = lambda: records
        c = rcv.counts()
        del rcv.log_records

        elapsed = (t_last or time.time()) - t0
        delivered = sent
        deferred_lines = len(snd.grep(r"status=deferred", ident="smtp"))
        res = {
            "workload": wl.key, "config": label, "flavour": flavour, "reuse": reuse,
            "run": run,
            "messages": wl.messages, "delivered": delivered, "bounced": bounced,
            "deferred_lines": deferred_lines,
            "received": c.messages, "plaintext": c.plaintext_messages,
            "connections": c.connections, "handshakes": c.handshakes,
            "resumed": c.resumed,
            "peak_connections": peaks.total(),
            "peak_connections_one_address": peaks.highest(),
            "peak_connections_by_address": peaks.peak if len(wl.addresses) <= 10 else None,
            "peak_sender_pss_kb": memory.peak_kb or None,
            "peak_pss_kb_by_program": memory.peak_programs_kb,
            "elapsed": elapsed,
            "injection_seconds": inj.done - t0 if inj.done else None,
            "processes_seen": processes_seen(snd),
            "injection_errors": inj.errors[:20],
            "cpu_sender_total": m_snd.total_cpu(),
            "cpu_receiver_total": m_rcv.total_cpu(),
            "cpu_sender_startup": ready["sender"],
            "cpu_receiver_startup": ready["receiver"],
            "cpu_sender_proc_window": _diff(end["sender"], ready["sender"]),
            "cpu_receiver_proc_window": _diff(end["receiver"], ready["receiver"]),
            "machine_busy_window": busy1 - busy0,
            "bench_self_window": self1 - self0,
            "loadavg_before": load0, "loadavg_after": os.getloadavg()[0],
            "cpuwrap_sender": m_snd.rusage, "cpuwrap_receiver": m_rcv.rusage,
            "cpu_sender_by_program": {
                k: round(v - ready_programs.get(k, 0.0), 3)
                for k, v in sorted(end_programs.items(), key=lambda kv: -kv[1])},
            "dir": w.dir,
        }
        res["cpu_sender"] = _diff(res["cpu_sender_total"], ready["sender"])
        res["cpu_receiver"] = _diff(res["cpu_receiver_total"], ready["receiver"])
        ours = sum(x for x in (res["cpu_sender_proc_window"],
                               res["cpu_receiver_proc_window"],
                               res["bench_self_window"]) if x is not None)
        res["other_cpu_window"] = res["machine_busy_window"] - ours
        res.update(delivery_stats(snd))
        log("%s#%d %-18s %4d/%d delivered in %6.1fs  %5d handshakes  "
            "sender %6.2f s CPU  receiver %6.2f s CPU  p50 %s p99 %s"
            % (wl.key, run + 1, label, delivered, wl.messages, elapsed, c.handshakes,
               res["cpu_sender"] or -1, res["cpu_receiver"] or -1,
               res["delay_p50"], res["delay_p99"]))
        return res


# qmgr logs "from=<...>, size=" when it picks up a message that cleanup
# committed: counts() counts messages there (end of DATA), so must this.
RECEIVED_RE = re.compile(r"/qmgr\[\d+\]: \w+: from=<.*>, size=\d+")


def received(rcv):
    """Messages the receiver accepted so far (a cheap form of counts(),
    which also requires the queue id's smtpd "client=" line)."""
    try:
        with open(rcv.maillog, errors="replace") as f:
            return sum(1 for line in f if RECEIVED_RE.search(line))
    except FileNotFoundError:
        return 0


def processes_seen(pf):
    """{program: number of distinct processes that logged} for the sender."""
    pids = {}
    for ident, pid, _ in pf.log_records():
        pids.setdefault(ident.split("/")[-1], set()).add(pid)
    return {k: len(v) for k, v in sorted(pids.items())}


def _catch(f, sink):
    try:
        f()
    except BaseException as e:          # reported by the main thread
        sink.append(e)


def _diff(a, b):
    return None if a is None or b is None else a - b


# -- figures and output -------------------------------------------------

def figures(r):
    """The table's figures for one run."""
    n = r["delivered"] or 0
    per_k = (lambda x: None if x is None or not n else x * 1000.0 / n)
    return {
        "handshakes": per_k(r["handshakes"]),
        "handshake_floor": per_k(r.get("peak_connections")),
        "peak_address": r.get("peak_connections_one_address"),
        "connections": per_k(r["connections"]),
        "msgs": n / r["elapsed"] if r["elapsed"] > 0 else None,
        "cpu_sender": per_k(r["cpu_sender"]),
        "cpu_receiver": per_k(r["cpu_receiver"]),
        "p50": r["delay_p50"],
        "p99": r["delay_p99"],
        "memory": (r["peak_sender_pss_kb"] / 1024.0 if r.get("peak_sender_pss_kb")
                   else None),
    }


# (key, column heading, number format); msg/s is the only "higher is better".
COLUMNS = [
    ("handshakes", "TLS handshakes /1000 msg", "%.0f"),
    ("handshake_floor", "peak concurrent connections /1000 msg", "%.0f"),
    ("peak_address", "peak concurrent connections at one receiver address", "%.0f"),
    ("connections", "TCP connections /1000 msg", "%.0f"),
    ("msgs", "msg/s", "%.1f"),
    ("cpu_sender", "sender CPU s /1000 msg", "%.1f"),
    ("cpu_receiver", "receiver CPU s /1000 msg", "%.1f"),
    ("p50", "latency p50 s", "%.2f"),
    ("p99", "latency p99 s", "%.2f"),
    ("memory", "peak sender memory MB (Pss)", "%.0f"),
]


def ratio(v, base):
    if v is None or base is None or base == 0:
        return None
    return v / base


def cell(fmt, v, base):
    if v is None:
        return "n/a"
    r = ratio(v, base)
    return "%s (%s)" % (fmt % v, "n/a" if r is None else "%.2f" % r)


def median(values):
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    k = len(v) // 2
    return v[k] if len(v) % 2 else (v[k - 1] + v[k]) / 2


def aggregate(results):
    """{(workload, config): summary} over the runs of each pair: the median
    of every figure, deliveries summed, and each figure's spread over the
    runs (largest / smallest - 1)."""
    groups = {}
    for r in results:
        groups.setdefault((r["workload"], r["config"]), []).append(r)
    out = {}
    for key, runs in groups.items():
        figs = [figures(r) for r in runs]
        med, spread = {}, {}
        for k in figs[0]:
            vals = [f[k] for f in figs if f[k] is not None]
            med[k] = median(vals)
            spread[k] = (max(vals) / min(vals) - 1) if len(vals) > 1 and min(vals) > 0 else None
        out[key] = {"figures": med, "spread": spread, "runs": len(runs),
                    "delivered": sum(r["delivered"] for r in runs),
                    "messages": sum(r["messages"] for r in runs)}
    return out


def describe(wl):
    return "%s %s: %d message%s of %s to %d domain%s on %d receiver address%s%s" % (
        wl.key, wl.title, wl.messages, plural(wl.messages), human_size(wl.size),
        len(wl.domains), plural(len(wl.domains)), len(wl.addresses),
        "es" if len(wl.addresses) != 1 else "",
        ", %g s apart" % wl.spacing if wl.spacing else "")


def plural(n):
    return "" if n == 1 else "s"


def markdown(results, wls):
    agg = aggregate(results)
    out = []
    for wl in wls:
        rows = [(cfg, agg[(wl.key, cfg)]) for cfg in (config_label(*c) for c in CONFIGS)
                if (wl.key, cfg) in agg]
        if not rows:
            continue
        base = agg.get((wl.key, config_label("stock", False)), {}).get("figures")
        runs = max(a["runs"] for _, a in rows)
        out.append("### " + describe(wl))
        out.append("")
        if runs > 1:
            out.append("Median of %d runs per configuration." % runs)
            out.append("")
        out.append("| configuration | delivered | " + " | ".join(c[1] for c in COLUMNS) + " |")
        out.append("|---|---:|" + "---:|" * len(COLUMNS))
        for cfg, a in rows:
            f = a["figures"]
            out.append("| %s | %d/%d | %s |" % (
                cfg, a["delivered"], a["messages"],
                " | ".join(cell(fmt, f[k], base and base[k]) for k, _, fmt in COLUMNS)))
        out.append("")
        if runs > 1:
            worst = []
            for k, heading, _ in COLUMNS:
                sp = [a["spread"][k] for _, a in rows if a["spread"][k] is not None]
                if sp:
                    worst.append("%s %.0f %%" % (heading, 100 * max(sp)))
            out.append("Largest spread between runs of one configuration "
                       "(largest / smallest - 1): " + "; ".join(worst) + ".")
            out.append("")
    return "\n".join(out)


DELIVERY_PROGRAMS = ("smtp", "tlsproxy", "scache")


def cpu_split_markdown(results, wls):
    """Sender CPU per 1000 messages split into the delivery agents, which
    TLS reuse changes (smtp, tlsproxy, scache), and the rest of the
    instance, which does the same work in every configuration (smtpd
    receiving the injected mail, cleanup, qmgr, trivial-rewrite, postlogd,
    master).  Medians over the runs; ratios to stock reuse off."""
    out = ["| workload | configuration | smtp | tlsproxy | scache | delivery agents "
           "| rest of the sender | sender total |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    groups = {}
    for r in results:
        n = r["delivered"] or 0
        if not n or r.get("cpu_sender") is None:
            continue
        prog = r.get("cpu_sender_by_program", {})
        v = {p: prog.get(p, 0.0) * 1000.0 / n for p in DELIVERY_PROGRAMS}
        v["delivery"] = sum(v[p] for p in DELIVERY_PROGRAMS)
        v["total"] = r["cpu_sender"] * 1000.0 / n
        v["rest"] = v["total"] - v["delivery"]
        groups.setdefault((r["workload"], r["config"]), []).append(v)
    for wl in wls:
        base = groups.get((wl.key, config_label("stock", False)))
        base = {k: median([v[k] for v in base]) for k in base[0]} if base else {}
        for cfg in (config_label(*c) for c in CONFIGS):
            runs = groups.get((wl.key, cfg))
            if not runs:
                continue
            med = {k: median([v[k] for v in runs]) for k in runs[0]}
            cells = []
            for k in DELIVERY_PROGRAMS + ("delivery", "rest", "total"):
                if k in ("delivery", "rest", "total"):
                    cells.append(cell("%.2f", med[k], base.get(k)))
                else:
                    cells.append("%.2f" % med[k])
            out.append("| %s | %s | %s |" % (wl.key, cfg, " | ".join(cells)))
    return "\n".join(out)


def memory_markdown(results, wls):
    """Peak memory (Pss, MB) of the delivery agents and of the whole sender
    during delivery, medians over the runs."""
    out = ["| workload | configuration | smtp | tlsproxy | scache | whole sender |",
           "|---|---|---:|---:|---:|---:|"]
    groups = {}
    for r in results:
        if not r.get("peak_sender_pss_kb"):
            continue
        prog = r.get("peak_pss_kb_by_program") or {}
        v = {p: prog.get(p, 0) / 1024.0 for p in DELIVERY_PROGRAMS}
        v["total"] = r["peak_sender_pss_kb"] / 1024.0
        groups.setdefault((r["workload"], r["config"]), []).append(v)
    for wl in wls:
        for cfg in (config_label(*c) for c in CONFIGS):
            runs = groups.get((wl.key, cfg))
            if not runs:
                continue
            med = {k: median([v[k] for v in runs]) for k in runs[0]}
            out.append("| %s | %s | %s |" % (wl.key, cfg, " | ".join(
                "%.1f" % med[k] for k in DELIVERY_PROGRAMS + ("total",))))
    return "\n".join(out)


def details_markdown(results):
    out = ["| workload | configuration | run | elapsed s | injection s | resumed "
           "| reused deliveries | deferred | sender CPU s (start-up) "
           "| receiver CPU s (start-up) | sender CPU s, /proc window "
           "| smtp / tlsproxy processes | other load CPU s |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        procs = r.get("processes_seen", {})
        out.append("| %s | %s | %d | %.1f | %s | %d | %d | %d | %s (%s) | %s (%s) | %s "
                   "| %d / %d | %.1f |" % (
                       r["workload"], r["config"], r["run"] + 1, r["elapsed"],
                       fmt2(r["injection_seconds"]), r["resumed"],
                       r["deliveries_on_reused_connection"], r["deferred_lines"],
                       fmt2(r["cpu_sender"]), fmt2(r["cpu_sender_startup"]),
                       fmt2(r["cpu_receiver"]), fmt2(r["cpu_receiver_startup"]),
                       fmt2(r["cpu_sender_proc_window"]), procs.get("smtp", 0),
                       procs.get("tlsproxy", 0), r["other_cpu_window"]))
    return "\n".join(out)


def fmt2(v):
    return "n/a" if v is None else "%.2f" % v


def human_size(n):
    return "%d MB" % (n // 2**20) if n >= 2**20 else "~%d KB" % (n // 1024)


# (key, panel title, format of the baseline's absolute value)
CHART_METRICS = [
    ("handshakes", "TLS handshakes per message", "%.0f/1000"),
    ("connections", "TCP connections per message", "%.0f/1000"),
    ("msgs", "messages per second", "%.1f/s"),
    ("cpu_sender", "sender CPU per message", "%.1f s/1000"),
    ("cpu_receiver", "receiver CPU per message", "%.1f s/1000"),
    ("p50", "latency p50", "%.2f s"),
    ("p99", "latency p99", "%.2f s"),
]
CHART_COLOURS = {("stock", True): "#d95f02", ("patched", False): "#7570b3",
                 ("patched", True): "#1b9e77", ("stock", None): "#999999"}
LOG_TICKS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]


def chart(results, wls, outdir):
    """chart.png with gnuplot.  One panel per figure; for each workload one
    bar per configuration, its ratio to stock reuse off drawn from 1 on a
    log scale (a bar going down = fewer / less than stock reuse off) and
    printed at its end.  The baseline's own value is under each workload.
    Returns None, or why there is no chart."""
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        return "gnuplot not found (Debian package gnuplot-nox): no chart"
    others = [c for c in CONFIGS if c != ("stock", False)]
    keys = [wl.key for wl in wls if any(r["workload"] == wl.key for r in results)]
    figs = {key: a["figures"] for key, a in aggregate(results).items()}
    base_label = config_label("stock", False)
    width = 0.8 / len(others)
    datafile = os.path.join(outdir, "chart.dat")
    script = os.path.join(outdir, "chart.gp")
    png = os.path.join(outdir, "chart.png")
    lines = [
        'set terminal pngcairo size 1800,1000 font "DejaVu Sans,11" noenhanced',
        'set output "%s"' % png,
        'set multiplot layout 2,4 title "Postfix %s stock and patched: ratio to '
        'stock with smtp_tls_connection_reuse = no (log scale; 1 = same)" font ",15"'
        % POSTFIX_VERSION,
        "set logscale y 10",
        "set grid ytics lc rgb '#dddddd'",
        "set xrange [-0.6:%g]" % (len(keys) - 0.4),
        "set style fill solid 0.85 border -1",
        "set bmargin 4",
        "unset key",
    ]
    with open(datafile, "w") as f:
        f.write("# blocks: metric x config; columns: x ratio xlow xhigh ylow yhigh\n")
        block = 0
        for mi, (metric, title, basefmt) in enumerate(CHART_METRICS):
            ratios = []
            zeros = []
            plots = ["1 with lines lc rgb 'black' lw 2 notitle"]
            for ci, cfg in enumerate(others):
                f.write("# %s, %s\n" % (metric, config_label(*cfg)))
                rows = 0
                for xi, key in enumerate(keys):
                    base = figs.get((key, base_label), {}).get(metric)
                    r = ratio(figs.get((key, config_label(*cfg)), {}).get(metric), base)
                    x = xi + (ci - (len(others) - 1) / 2.0) * width
                    if r == 0:
                        zeros.append(x)     # no bar on a log scale: a "0" label
                    if r is None or r <= 0:
                        continue
                    ratios.append(r)
                    f.write("%g %g %g %g %g %g\n" % (x, r, x - width * 0.45,
                                                       x + width * 0.45, min(1, r), max(1, r)))
                    rows += 1
                # gnuplot does not count a data block without data rows in
                # "index": every later block (and its colour) would shift.
                if rows == 0:
                    f.write("NaN NaN NaN NaN NaN NaN\n")
                f.write("\n\n")
                plots.append("'%s' index %d using 1:2:3:4:5:6 with boxxyerrorbars "
                             "lc rgb '%s' notitle" % (datafile, block, CHART_COLOURS[cfg]))
                # The ratio as text just beyond the end of its bar.
                plots.append("'%s' index %d using 1:($2 >= 1 ? $6*1.12 : $5/1.12):"
                             "(sprintf('%%.2g', $2)) with labels font ',8' notitle"
                             % (datafile, block))
                block += 1
            lo = min(ratios + [1]) / 1.6
            hi = max(ratios + [1]) * 1.6
            lo, hi = min(lo, 0.5), max(hi, 2)
            ticks = [t for t in LOG_TICKS if lo <= t <= hi]
            xtics = []
            for xi, key in enumerate(keys):
                base = figs.get((key, base_label), {}).get(metric)
                xtics.append('"%s\\n%s" %d' % (key, "n/a" if base is None
                                                 else basefmt % base, xi))
            lines += [
                'set title "%s" font ",12"' % title,
                "set yrange [%g:%g]" % (lo, hi),
                "set ytics (%s)" % ", ".join("'%g' %g" % (t, t) for t in ticks),
                "set xtics (%s) font ',10'" % ", ".join(xtics),
            ]
            lines += ["set label %d '0' at %g,%g center font ',8'" % (n + 10, x, lo * 1.25)
                      for n, x in enumerate(zeros)]
            lines += ["plot " + ", ".join(plots), "unset label"]
    # Eighth panel: the legend and how to read the chart.
    lines += [
        "unset title", "unset xtics", "unset ytics", "unset grid", "unset border",
        "unset logscale y", "set xrange [0:1]", "set yrange [0:1]",
        "set key center center font ',12' spacing 1.6 samplen 2",
        "set label 1 'under each workload: the value for stock reuse off' "
        "at 0.02,0.1 font ',10'",
    ]
    legend = ["NaN with boxes lc rgb '%s' title '%s'" % (CHART_COLOURS[c], config_label(*c))
              for c in others]
    lines.append("plot " + ", ".join(legend))
    lines.append("unset multiplot")
    with open(script, "w") as f:
        f.write("\n".join(lines) + "\n")
    r = subprocess.run([gnuplot, script], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return "gnuplot failed: " + r.stderr[-1000:]
    return None


def command_output(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return "(%s)" % e


def machine_info():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = f.readline().split(":", 1)[1].strip()
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory": mem,
        "kernel": platform.release(),
        "os": command_output(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "openssl": command_output(["openssl", "version"]),
        "project_commit": command_output(["git", "-C", TOP, "rev-parse", "--short", "HEAD"]),
        "loadavg": os.getloadavg(),
        "patched_installation": PATCHED["name"],
    }
    for flavour in ("stock", "patched"):
        postconf = os.path.join(INST, inst_name(flavour), "sbin", "postconf")
        info["postfix_" + flavour] = command_output([postconf, "-d", "mail_version"])
    return info


# -- main ---------------------------------------------------------------

def _terminate(signum, frame):
    # Unwind like Ctrl-C does, so that every World's with-block stops what
    # it started; a second signal must not interrupt that clean-up.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main():
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small message counts (CI, about 4 minutes)")
    ap.add_argument("--out", help="results directory (default bench/results/<UTC time>)")
    ap.add_argument("--patched", default="patched", metavar="NAME",
                    help="installation for the patched configurations "
                         "(build/<base>/inst/NAME; default patched)")
    ap.add_argument("--workloads", default="W1,W2,W3,W4,W5",
                    help="comma-separated subset of W1,W2,W3,W4,W5,W6 (W5: w5_wan.py; W6: w6_many.py, not in the default set: make w6)")
    ap.add_argument("--repeat", type=int, metavar="N",
                    help="runs per configuration for every workload (default: "
                         "W1 once, W2-W4 three times; --quick: once)")
    ap.add_argument("--configs", metavar="LABELS",
                    help="comma-separated subset of the configurations (labels as in "
                         "results.md, for example \"stock reuse off,patched reuse off,"
                         "patched reuse on\"); stock reuse off, the base of every "
                         "ratio, is always run")
    ap.add_argument("--rechart", metavar="DIR",
                    help="only redraw DIR/chart.png from DIR/results.json")
    args = ap.parse_args()
    PATCHED["name"] = args.patched
    if args.configs:
        wanted_cfgs = {c.strip() for c in args.configs.split(",") if c.strip()}
        unknown = wanted_cfgs - {config_label(*c) for c in CONFIGS}
        if unknown:
            sys.exit("--configs: unknown %s; known: %s" % (
                ", ".join(sorted(unknown)), ", ".join(config_label(*c) for c in CONFIGS)))
        wanted_cfgs.add(config_label("stock", False))
        CONFIGS[:] = [c for c in CONFIGS if config_label(*c) in wanted_cfgs]

    if args.rechart:
        outdir = os.path.abspath(args.rechart)
        with open(os.path.join(outdir, "results.json")) as f:
            saved = json.load(f)
        quick = saved.get("machine", {}).get("mode") == "quick"
        present = {r["workload"] for r in saved["results"]}
        problem = chart(saved["results"],
                        [wl for wl in workloads(quick) if wl.key in present], outdir)
        if problem:
            sys.exit(problem)
        return

    for flavour in ("stock", "patched"):
        if not installed(inst_name(flavour)):
            sys.exit("Postfix %s is not installed under build/%s/inst: run '%s'"
                     % (flavour, BASE, make_hint("build" if flavour == "patched"
                                                 else "build-stock")))
    wanted = [k.strip().upper() for k in args.workloads.split(",") if k.strip()]
    if args.repeat is not None and args.repeat < 1:
        sys.exit("--repeat must be at least 1")
    wls = [wl for wl in workloads(args.quick, args.repeat) if wl.key in wanted]
    w6 = "W6" in wanted
    if not wls and "W5" not in wanted and not w6:
        sys.exit("no workload selected")

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    outdir = os.path.abspath(args.out or os.path.join(
        HERE, "results", stamp + ("-quick" if args.quick else "")))
    os.makedirs(outdir, exist_ok=True)
    logf = open(os.path.join(outdir, "bench.log"), "a")

    def log(text):
        line = "%s %s" % (time.strftime("%H:%M:%S"), text)
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    info = machine_info()
    log("bench %s: %s, %d CPUs (%s), kernel %s; results in %s" % (
        "quick" if args.quick else "full", info["date_utc"], info["nproc"],
        info["cpu_model"], info["kernel"], outdir))
    started = time.time()
    results = []
    failed = []
    for wl in wls:
        for run in range(wl.runs):
            # Each run starts with the next configuration, so that none is
            # always first (or always right after the heaviest one).
            k = run % len(CONFIGS)
            for flavour, reuse in CONFIGS[k:] + CONFIGS[:k]:
                try:
                    results.append(run_one(wl, flavour, reuse, run, log))
                except Exception as e:      # report, go on with the next run
                    failed.append("%s run %d %s: %s" % (
                        wl.key, run + 1, config_label(flavour, reuse), e))
                    log("FAILED " + failed[-1])
    w5 = None
    if "W5" in wanted:                  # its own module, tables and files
        import w5_wan
        w5 = w5_wan.run(args.quick, outdir, log)
        failed += w5["failed"]
    if w6:
        r = subprocess.run([PYTHON, os.path.join(HERE, "w6_many.py"), "--n",
                            "100" if args.quick else "100,1000",
                            "--out", os.path.join(outdir, "w6")])
        if r.returncode:
            failed.append("W6: bench/w6_many.py exit status %d" % r.returncode)
    info["bench_seconds"] = time.time() - started
    info["loadavg_end"] = os.getloadavg()
    info["mode"] = "quick" if args.quick else "full"

    table = markdown(results, wls)
    details = details_markdown(results)
    problem = chart(results, wls, outdir) if results else None
    if w5:
        table += "\n" + w5["markdown"] + "\n"
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write("# Postfix TLS connection reuse bench (%s)\n\n" % info["mode"])
        if PATCHED["name"] != "patched":
            f.write("The patched configurations run build/%s/inst/%s.\n\n"
                    % (BASE, PATCHED["name"]))
        f.write("%s; %d CPUs, %s; kernel %s; %s; Postfix stock %s / patched %s.\n"
                "Sender: TLS level encrypt, no CAfile, Postfix's default connection cache "
                "settings; receivers: one stock Postfix instance per run.\n"
                "Each cell: value (ratio to stock reuse off).  CPU is all processes "
                "of the instance (cpuwrap.py), start-up excluded; latency is "
                "Postfix's delay= (arrival to status=sent).\n\n"
                % (info["date_utc"], info["nproc"], info["cpu_model"], info["kernel"],
                   info["openssl"], info["postfix_stock"].split("=")[-1].strip(),
                   info["postfix_patched"].split("=")[-1].strip()))
        f.write(table + "\n")
        f.write("### Where the sender's CPU goes (s per 1000 messages)\n\n"
                "The delivery agents are the processes that TLS reuse changes; "
                "the rest of the sender (smtpd receiving the injected mail, "
                "cleanup, qmgr, trivial-rewrite, postlogd, master, and processes "
                "that exited during the run) does the same work in every "
                "configuration.  Medians over the runs; in parentheses the ratio "
                "to stock reuse off.\n\n" + cpu_split_markdown(results, wls) + "\n\n")
        f.write("### Peak memory of the sender (MB, Pss)\n\n"
                "Sampled once a second during delivery: the sum of the "
                "proportional set sizes of the processes (shared pages count "
                "once in all), per delivery agent and for the whole sender "
                "instance.  Medians over the runs.\n\n"
                + memory_markdown(results, wls) + "\n\n")
        f.write("### Details\n\n" + details + "\n\n")
        f.write("Bench time %.0f s.\n" % info["bench_seconds"])
        if failed:
            f.write("\nFailed runs:\n\n" + "".join("- %s\n" % x for x in failed))
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump({"machine": info, "results": results, "failed": failed}, f, indent=1)
    with open(os.path.join(outdir, "machine.txt"), "w") as f:
        for k, v in info.items():
            f.write("%s: %s\n" % (k, v))

    print()
    print(table)
    log("bench took %.0f s; %s" % (info["bench_seconds"], outdir))
    if problem:
        log(problem)
    # Plaintext is expected only from the no-TLS floor configuration.
    incomplete = [r for r in results if r["delivered"] != r["messages"]
                  or (r["plaintext"] and r["reuse"] is not None)
                  or r["received"] < r["delivered"]]
    for r in incomplete:
        log("INCOMPLETE %s run %d %s: %d/%d delivered, %d received, %d plaintext"
            % (r["workload"], r["run"] + 1, r["config"], r["delivered"], r["messages"],
               r["received"], r["plaintext"]))
    if w5 and not w5["ok"]:
        log("INCOMPLETE W5: see w5.md and w5.json")
    return 1 if failed or incomplete or problem or (w5 and not w5["ok"]) else 0


if __name__ == "__main__":
    sys.exit(main())
