"""tlsproxy(8) and smtp(8) under valgrind memcheck, with TLS reuse on.

Issue 7.  The sender's master runs its tlsproxy and smtp programs through
wrappers in a daemon directory of the test's own (every other program is a
link to the installed one): "exec valgrind --tool=memcheck ... <program>".
Traffic: 8 messages 1 s apart (reused connection, cached between messages),
then a burst of 40 to 4 domains on 2 receiver addresses, then the instance
is stopped, so that every process exits and valgrind writes its summary.

Asserted per process log: no memcheck errors (invalid reads or writes, uses
of uninitialised values, invalid frees), and no memory "definitely lost".
Memory that a daemon holds until exit (its configuration, the TLS
library's tables) shows as "still reachable" and is not a leak.

valgrind writes its leak check and ERROR SUMMARY when the traced process
exits, which can be well after the master has: the test waits until every
traced pid (one log per pid) is gone, requires an ERROR SUMMARY in every
log, and counts error reports by their own lines as well, so that a log cut
short still fails on the errors it holds.  Without valgrind the test fails
(scripts/deps installs it).
"""

import glob
import os
import re
import shutil

import pytest

from harness.world import wait_for

VALGRIND = shutil.which("valgrind")
ADDRS = ["127.0.0.33", "127.0.0.34"]


def valgrind_daemons(s, programs, logdir):
    os.makedirs(logdir)
    os.chmod(logdir, 0o1777)
    s.wrap_daemons({p: 'exec %s --tool=memcheck --leak-check=full '
                       '--errors-for-leak-kinds=definite --error-exitcode=0 '
                       '--log-file=%s/%s.%%p.log "$REAL" "$@"' % (VALGRIND, logdir, p)
                    for p in programs})


# The first line of every memcheck error report (valgrind's manual, 4.2).
ERROR_RE = re.compile(
    r"^==\d+== (Invalid (read|write|free)|Mismatched free|"
    r"Conditional jump or move depends on uninitialised|"
    r"Use of uninitialised value|Syscall param .* (uninitialised|unaddressable)|"
    r"Source and destination overlap|Argument '.*' of function .* has a fishy|"
    r"\S.* bytes in [\d,]+ blocks are definitely lost)", re.M)


def summary(path):
    """(ERROR SUMMARY count or None, bytes definitely lost, error report
    lines, text) of one valgrind log."""
    text = open(path, errors="replace").read()
    errors = re.search(r"ERROR SUMMARY: (\d+) errors", text)
    lost = re.search(r"definitely lost: ([\d,]+) bytes", text)
    return (int(errors.group(1)) if errors else None,
            int(lost.group(1).replace(",", "")) if lost else 0,
            [m.group(0) for m in ERROR_RE.finditer(text)], text)


def traced(logdir):
    """{pid: log} of the processes that valgrind traced."""
    out = {}
    for path in glob.glob(os.path.join(logdir, "*.log")):
        m = re.search(r"\.(\d+)\.log$", path)
        out[int(m.group(1))] = path
    return out


def under_valgrind(pid):
    """True while pid is a live process running valgrind's tool (the
    wrapper exec's valgrind, which keeps the pid; a pid reused by another
    program after the traced one exited does not count)."""
    try:
        return "valgrind" in os.readlink("/proc/%d/exe" % pid)
    except OSError:
        return False


def test_tlsproxy_and_smtp_under_memcheck(world):
    if VALGRIND is None:
        pytest.fail("valgrind is not installed (scripts/deps test installs it)")
    r = world.postfix_receiver("r1", ADDRS)
    domains = ["m%d.test" % i for i in range(4)]
    s = world.sender({d: "[%s]:25" % ADDRS[i % 2] for i, d in enumerate(domains)},
                     reuse=True, smtp_starttls_timeout="60s",
                     smtp_data_done_timeout="60s")
    logdir = os.path.join(s.base, "valgrind")
    valgrind_daemons(s, ["tlsproxy", "smtp"], logdir)
    world.start()

    world.send(s, "user@m0.test", n=8, spacing=1)
    wait_for(lambda: r.counts().messages >= 8, 120, "8 spaced messages")
    for i in range(40):
        world.send(s, "user%d@%s" % (i, domains[i % 4]), n=1)
    wait_for(lambda: r.counts().messages >= 48, 240, "48 messages\n" + s.log_tail())
    c = r.counts()
    assert c.plaintext_messages == 0
    assert s.conn_uses(), "no connection was reused"
    s.stop()
    # The master is gone; its children finish under valgrind (leak check)
    # after it.  No new process can start now.
    wait_for(lambda: not [p for p in traced(logdir) if under_valgrind(p)], 180,
             "every traced process to exit: %s"
             % sorted(p for p in traced(logdir) if under_valgrind(p)))

    logs = traced(logdir)
    names = [os.path.basename(p) for p in logs.values()]
    assert any(n.startswith("tlsproxy.") for n in names)
    assert any(n.startswith("smtp.") for n in names)
    bad = []
    for pid, path in sorted(logs.items()):
        errors, lost, reports, text = summary(path)
        if errors is None or errors or lost or reports:
            verdict = ("no ERROR SUMMARY (the process did not finish)" if errors is None
                       else "ERROR SUMMARY %d errors" % errors)
            bad.append("%s: %s, %d bytes definitely lost, %d error reports %s\n%s"
                       % (os.path.basename(path), verdict, lost, len(reports),
                          reports[:5], text[-3000:]))
    print("%d valgrind logs checked" % len(logs))
    assert not bad, "\n\n".join(bad)
