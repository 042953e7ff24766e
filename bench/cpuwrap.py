#!/usr/bin/python3
"""Run a command and report the CPU time of everything it started.

    cpuwrap.py OUT.json -- postfix -c DIR start-fg

The bench runs each Postfix instance's master in the foreground under this
small parent.  When the command and every process below it have exited, it
writes OUT.json:

    {"utime": s, "stime": s, "reaped": n, "status": exit status of the command,
     "orphans_killed": n}

utime/stime are this process's RUSAGE_CHILDREN: the user and system CPU
seconds of every descendant that was waited for, directly or through its
parent.

Why a child subreaper: on "postfix stop" the master sends SIGTERM to its
process group and exits without waiting for the children it just
signalled.  Those children (smtp, smtpd, qmgr, tlsproxy, scache, ...) would
be re-parented to init and their CPU time lost.  As a subreaper
(prctl PR_SET_CHILD_SUBREAPER) this process inherits them instead, and
waiting for them adds their time to RUSAGE_CHILDREN.  Processes that the
master reaped while it ran are already in the master's own children's time,
which reaches us when the master is reaped.
"""

import ctypes
import json
import os
import resource
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tests"))
from harness.proc import children_of                 # noqa: E402

PR_SET_CHILD_SUBREAPER = 36

# How long to wait for orphans after the command exited, before killing them.
ORPHAN_GRACE = 30


def set_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_CHILD_SUBREAPER): " + os.strerror(err))


def direct_children():
    """PIDs whose parent is this process (orphans land here)."""
    return children_of(os.getpid())


def main():
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit("usage: cpuwrap.py OUT.json -- command [args...]")
    out, argv = sys.argv[1], sys.argv[3:]
    set_subreaper()
    # The command gets no blocked signals ("postfix stop" sends SIGTERM),
    # whatever mask this process inherited.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    pid = os.posix_spawn(argv[0], argv, os.environ)
    status = None
    reaped = 0
    killed = 0
    deadline = None
    while True:
        try:
            if deadline is None:
                wpid, wstatus, _ = os.wait4(-1, 0)
            else:
                wpid, wstatus, _ = os.wait4(-1, os.WNOHANG)
                if wpid == 0:
                    if time.time() > deadline:
                        # The command is gone but something it started is
                        # still running: stop it so the report is complete.
                        for child in direct_children():
                            try:
                                os.kill(child, signal.SIGKILL)
                                killed += 1
                            except OSError:
                                pass
                        deadline = time.time() + 5
                    time.sleep(0.05)
                    continue
        except ChildProcessError:
            break
        reaped += 1
        if wpid == pid:
            status = os.waitstatus_to_exitcode(wstatus)
            deadline = time.time() + ORPHAN_GRACE
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"utime": ru.ru_utime, "stime": ru.ru_stime, "reaped": reaped,
                   "status": status, "orphans_killed": killed}, f)
        f.write("\n")
    os.rename(tmp, out)
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
