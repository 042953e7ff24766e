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


def summary(path):
    text = open(path, errors="replace").read()
    errors = re.search(r"ERROR SUMMARY: (\d+) errors", text)
    lost = re.search(r"definitely lost: ([\d,]+) bytes", text)
    return (int(errors.group(1)) if errors else None,
            int(lost.group(1).replace(",", "")) if lost else 0, text)


@pytest.mark.skipif(VALGRIND is None, reason="valgrind is not installed")
def test_tlsproxy_and_smtp_under_memcheck(world):
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

    logs = glob.glob(os.path.join(logdir, "*.log"))
    assert any(os.path.basename(p).startswith("tlsproxy.") for p in logs)
    assert any(os.path.basename(p).startswith("smtp.") for p in logs)
    bad = []
    for path in logs:
        errors, lost, text = summary(path)
        if errors is None:
            continue            # a process that exec'd or did not finish
        if errors or lost:
            bad.append("%s: %d errors, %d bytes definitely lost\n%s"
                       % (os.path.basename(path), errors, lost, text[-3000:]))
    print("%d valgrind logs checked" % len(logs))
    assert not bad, "\n\n".join(bad)
