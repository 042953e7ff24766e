#!/usr/bin/python3
"""Where a bench workload's time goes on the whole machine, kernel included.

    /usr/bin/python3 bench/profile_machine.py [--workload W2] [--quick]
                     [--configs "stock reuse off,patched reuse on"] [--out DIR]
                     [--patched NAME]

callgrind (profile_reuse.py) counts the instructions of three daemons in user
space; on these machines most of an SMTP delivery's CPU time is in the
kernel (system calls, process and socket work), and most of it is spent by
processes that TLS reuse does not change.  This runs one bench workload
(bench.run_one(), the same set-up and figures as `make bench`) per
configuration, twice, under `perf record -a` (every CPU, every process):

    pass 1  cpu-clock samples at 999 Hz per CPU: CPU time per program, the
            kernel's share of it, and its top functions
    pass 2  the raw_syscalls:sys_enter tracepoint: system calls per message
            per program, and which ones

Only samples between the first injection and the last delivery count.
Each process is attributed to the sender instance, the receiver instance,
the injector (this Python process, which plays the sending clients), or
"other", by following perf's fork records up to the instance's master
wrapper.  Idle time (the swapper) is reported as such.  Tracing system
calls slows them down, so pass 2 gives counts, not times.

Writes <out>/profile.md.  The perf data files (gigabytes for a full W2) go
to build/<base>/perf-data/ and are removed once read, unless --keep-data.  Needs perf (Debian's linux-perf) with cpu-clock and tracepoint
access, as root; both builds installed, like the bench.
"""

import argparse
import collections
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench                                    # noqa: E402
from harness.base import BUILD                  # noqa: E402

FREQ = 999
DELIVERY_AGENTS = ("smtp", "tlsproxy", "scache")
SYSCALL_HEADER = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"

FORK_RE = re.compile(r"PERF_RECORD_FORK\((\d+):\d+\):\((\d+):\d+\)")
LINE_RE = re.compile(r"^\s*(.+?)\s+(\d+)/(\d+)\s+(\d+\.\d+):\s+(\S+):\s*(.*)$")
SAMPLE_RE = re.compile(r"^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$")
NR_RE = re.compile(r"NR (\d+)")


def syscall_names():
    names = {}
    try:
        with open(SYSCALL_HEADER) as f:
            for line in f:
                m = re.match(r"#define __NR_(\w+)\s+(\d+)", line)
                if m:
                    names[int(m.group(2))] = m.group(1)
    except OSError:
        pass
    return names


class Roots:
    """The pids of the instances' master wrappers, captured when the bench
    starts them, and the monotonic time of the first injection."""

    def __init__(self):
        self.pids = {}
        self.t0 = None
        orig_start = bench.Metered.start
        orig_init = bench.Injector.__init__
        roots = self

        def start(metered):
            orig_start(metered)
            roots.pids[metered.proc.pid] = (
                "sender" if metered.pf.name == "sender" else "receiver")

        def init(injector, *a, **kw):
            roots.t0 = time.monotonic()
            orig_init(injector, *a, **kw)

        bench.Metered.start = start
        bench.Injector.__init__ = init

    def reset(self):
        self.pids = {}
        self.t0 = None


def record(events, path, wl, flavour, reuse, roots):
    """Run one bench run under perf record -a; return (result, window)."""
    # Large buffers: a burst makes hundreds of thousands of system calls a
    # second, and a lost fork record would misattribute a whole process.
    argv = ["perf", "record", "-a", "-k", "CLOCK_MONOTONIC", "-m", "8192", "-o", path]
    for e in events:
        argv += ["-e", e]
    if "cpu-clock" in events:
        argv += ["-F", str(FREQ)]
    perf = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1)
    if perf.poll() is not None:
        raise RuntimeError("perf record failed: %s" % perf.stderr.read().decode())
    roots.reset()
    try:
        r = bench.run_one(wl, flavour, reuse, 0, print)
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait(120)
    window = (roots.t0, roots.t0 + r["elapsed"])
    pids = dict(roots.pids)
    pids[perf.pid] = "other"            # the profiler itself
    return r, pids, window


def lost_events(path):
    """Samples and records perf says it lost (its ring buffer overflowed)."""
    r = subprocess.run(["perf", "report", "-i", path, "--stats"], capture_output=True,
                       text=True)
    return sum(int(n) for n in re.findall(r"LOST(?:_SAMPLES)? events:\s+(\d+)", r.stdout))


def perf_lines(path, fields):
    """Lines of "perf script"; raises when perf fails, so that a truncated
    listing never passes for a complete one.  A caller that stops early
    (an exception in its loop) closes the pipe and reaps perf here."""
    p = subprocess.Popen(["perf", "script", "-i", path, "-F", fields, "--show-task-events"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         errors="replace")
    done = False
    try:
        for line in p.stdout:
            yield line
        done = True
    finally:
        p.stdout.close()
        rc = p.wait()
    if done and rc != 0:
        raise RuntimeError("perf script -i %s exited with %d" % (path, rc))


class Attribution:
    """pid -> instance, from fork records and the instances' root pids."""

    def __init__(self, roots, injector_pid):
        self.parent = {}
        self.roots = roots
        self.injector = injector_pid
        self.memo = {}

    def fork(self, line):
        m = FORK_RE.search(line)
        if m and m.group(1) != m.group(2):
            self.parent[int(m.group(1))] = int(m.group(2))
        return m is not None

    def instance(self, pid):
        if pid in self.memo:
            return self.memo[pid]
        seen, p, found = [], pid, "other"
        while p and len(seen) < 64:
            if p in self.roots:     # checked first: perf is the injector's child
                found = self.roots[p]
                break
            if p == self.injector:
                found = "injector"
                break
            seen.append(p)
            p = self.parent.get(p)
        for q in seen:
            self.memo[q] = found
        self.memo[pid] = found
        return found


def parse_cpu(path, roots, window):
    att = Attribution(roots, os.getpid())
    samples = collections.Counter()
    kernel = collections.Counter()
    syms = collections.defaultdict(collections.Counter)
    idle = 0
    for line in perf_lines(path, "comm,pid,tid,time,event,ip,sym,dso"):
        if "PERF_RECORD_FORK" in line:
            att.fork(line)
            continue
        m = LINE_RE.match(line)
        if not m or m.group(5) != "cpu-clock":
            continue
        t = float(m.group(4))
        if not window[0] <= t <= window[1]:
            continue
        comm, pid = m.group(1).strip(), int(m.group(2))
        if pid == 0:
            idle += 1
            continue
        key = (att.instance(pid), comm)
        samples[key] += 1
        s = SAMPLE_RE.match(m.group(6))
        sym, dso = (s.group(1), s.group(2)) if s else ("?", "?")
        if dso.startswith("[kernel"):
            kernel[key] += 1
            dso = "kernel"
        else:
            dso = os.path.basename(dso)
        if sym.startswith("[unknown]") or not sym:
            sym = "?"
        syms[key]["%s (%s)" % (re.sub(r"\+0x[0-9a-f]+$", "", sym), dso)] += 1
    return samples, kernel, syms, idle


def parse_syscalls(path, roots, window, names):
    att = Attribution(roots, os.getpid())
    calls = collections.defaultdict(collections.Counter)
    for line in perf_lines(path, "comm,pid,tid,time,event,trace"):
        if "PERF_RECORD_FORK" in line:
            att.fork(line)
            continue
        m = LINE_RE.match(line)
        if not m or not m.group(5).endswith("sys_enter"):
            continue
        t = float(m.group(4))
        if not window[0] <= t <= window[1]:
            continue
        n = NR_RE.search(m.group(6))
        if not n:
            continue
        key = (att.instance(int(m.group(2))), m.group(1).strip())
        nr = int(n.group(1))
        calls[key][names.get(nr, str(nr))] += 1
    return calls


def role(key):
    inst, comm = key
    if inst == "sender":
        return "sender: delivery agents" if comm in DELIVERY_AGENTS else "sender: the rest"
    return {"receiver": "receiver", "injector": "injector (bench)"}.get(inst, "other")


ROLES = ("sender: delivery agents", "sender: the rest", "receiver", "injector (bench)",
         "other")


def report(runs, wl, out):
    """runs: [(label, result, samples, kernel, syms, idle, calls)]"""
    lines = ["# Whole-machine profile of %s (%s)" % (wl.key, bench.describe(wl)), ""]
    lines.append("%s; perf cpu-clock at %d Hz per CPU and the raw_syscalls:sys_enter "
                 "tracepoint, every process, from the first injection to the last "
                 "delivery. CPU figures are ms per message (samples / %d Hz / "
                 "messages); system calls per message come from a second run of the "
                 "same configuration. \"kernel\" is the share of the CPU time spent "
                 "in the kernel." % (datetime.datetime.now(datetime.timezone.utc)
                                     .strftime("%Y-%m-%d %H:%M UTC"), FREQ, FREQ))
    lines.append("")
    lines.append("## Where the time goes, by role (ms CPU per message)")
    lines.append("")
    head = "| configuration | elapsed s | idle | " + " | ".join(ROLES) + " | total busy |"
    lines += [head, "|---|" + "---:|" * (len(ROLES) + 3)]
    for label, r, samples, kernel, syms, idle, calls in runs:
        n = max(r["delivered"], 1)
        by = collections.Counter()
        kby = collections.Counter()
        for k, v in samples.items():
            by[role(k)] += v
            kby[role(k)] += kernel[k]
        busy = sum(by.values())
        cells = []
        for ro in ROLES:
            ms = by[ro] * 1000.0 / FREQ / n
            kshare = 100.0 * kby[ro] / by[ro] if by[ro] else 0
            cells.append("%.2f (kernel %d %%)" % (ms, kshare))
        lines.append("| %s | %.1f | %.2f | %s | %.2f |" % (
            label, r["elapsed"], idle * 1000.0 / FREQ / n, " | ".join(cells),
            busy * 1000.0 / FREQ / n))
    lines.append("")
    lines.append("## By program (ms CPU per message, system calls per message)")
    for label, r, samples, kernel, syms, idle, calls in runs:
        n = max(r["delivered"], 1)
        lines += ["", "### %s" % label, "",
                  "%d/%d delivered in %.1f s; %d TLS handshakes at the receiver; perf "
                  "lost %d cpu-clock samples and %d system call records." % (
                      r["delivered"], r["messages"], r["elapsed"], r["handshakes"],
                      r["perf_lost"][0], r["perf_lost"][1]), "",
                  "| instance | program | ms CPU /msg | kernel | syscalls /msg | top system calls /msg | top functions (share of the program's samples) |",
                  "|---|---|---:|---:|---:|---|---|"]
        keys = set(samples) | set(calls)
        for key in sorted(keys, key=lambda k: -samples.get(k, 0)):
            s = samples.get(key, 0)
            c = calls.get(key, collections.Counter())
            if s * 1000.0 / FREQ / n < 0.01 and sum(c.values()) / n < 1:
                continue
            top_calls = ", ".join("%s %.1f" % (name, v / n) for name, v in c.most_common(4))
            top_syms = ", ".join("`%s` %d %%" % (name, 100.0 * v / s)
                                 for name, v in syms[key].most_common(3)) if s else ""
            lines.append("| %s | %s | %.3f | %d %% | %.1f | %s | %s |" % (
                key[0], key[1], s * 1000.0 / FREQ / n, 100.0 * kernel[key] / s if s else 0,
                sum(c.values()) / n, top_calls, top_syms))
    with open(os.path.join(out, "profile.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", default="W2", help="one of W1..W4 (default W2)")
    ap.add_argument("--quick", action="store_true", help="the bench's --quick sizes")
    ap.add_argument("--configs", help="comma-separated configuration labels "
                    "(default: all five, as in make bench)")
    ap.add_argument("--out", help="results directory (default "
                    "bench/results/machine-profile-<UTC time>)")
    ap.add_argument("--patched", default="patched", metavar="NAME",
                    help="installation for the patched configurations "
                         "(build/<base>/inst/NAME, as bench.py --patched)")
    ap.add_argument("--keep-data", action="store_true",
                    help="keep the perf data files in build/<base>/perf-data/")
    args = ap.parse_args()
    bench.PATCHED["name"] = args.patched
    if shutil.which("perf") is None:
        sys.exit("perf not found: apt-get install linux-perf")
    wls = [w for w in bench.workloads(args.quick, 1) if w.key == args.workload.upper()]
    if not wls:
        sys.exit("unknown workload %s" % args.workload)
    wl = wls[0]
    configs = bench.CONFIGS
    if args.configs:
        wanted = [c.strip() for c in args.configs.split(",")]
        configs = [c for c in bench.CONFIGS if bench.config_label(*c) in wanted]
        if len(configs) != len(wanted):
            sys.exit("unknown configuration in %r; known: %s" % (
                args.configs, ", ".join(bench.config_label(*c) for c in bench.CONFIGS)))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = os.path.abspath(args.out or os.path.join(HERE, "results", "machine-profile-" + stamp))
    os.makedirs(out, exist_ok=True)
    scratch = os.path.join(BUILD, "perf-data", stamp)
    os.makedirs(scratch, exist_ok=True)
    names = syscall_names()
    roots = Roots()
    runs = []
    for flavour, reuse in configs:
        label = bench.config_label(flavour, reuse)
        tag = label.replace(" ", "-").replace("(", "").replace(")", "")
        cpu_data = os.path.join(scratch, "perf-cpu-%s.data" % tag)
        sys_data = os.path.join(scratch, "perf-syscalls-%s.data" % tag)
        r, pids, window = record(["cpu-clock"], cpu_data, wl, flavour, reuse, roots)
        samples, kernel, syms, idle = parse_cpu(cpu_data, pids, window)
        r2, pids2, window2 = record(["raw_syscalls:sys_enter"], sys_data, wl, flavour,
                                    reuse, roots)
        calls = parse_syscalls(sys_data, pids2, window2, names)
        n2 = max(r2["delivered"], 1)
        # Scale the second run's counts to the first run's message count.
        scale = max(r["delivered"], 1) / n2
        calls = {k: collections.Counter({s: v * scale for s, v in c.items()})
                 for k, c in calls.items()}
        r["perf_lost"] = (lost_events(cpu_data), lost_events(sys_data))
        runs.append((label, r, samples, kernel, syms, idle, calls))
        if not args.keep_data:
            for f in (cpu_data, sys_data):
                for g in (f, f + ".old"):
                    if os.path.exists(g):
                        os.unlink(g)
    print(report(runs, wl, out))
    print("\nwritten to %s/profile.md" % out)


if __name__ == "__main__":
    main()
