"""Small helpers for the programs that tests start."""

import os
import signal
import subprocess


def stop_process(proc, timeout=10):
    """Stop a subprocess.Popen that we started: SIGTERM, then SIGKILL."""
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def proc_stat(pid):
    """(command name, fields) of /proc/PID/stat, the fields being those
    after the ")" that ends the name (state is fields[0], ppid fields[1],
    utime fields[11]); None when the process is gone."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            st = f.read()
    except OSError:
        return None
    return st[st.index("(") + 1:st.rindex(")")], st[st.rindex(")") + 2:].split()


def pids():
    """The PIDs of all processes now."""
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def children_of(parent):
    """PIDs of the processes whose parent is parent."""
    found = []
    for pid in pids():
        st = proc_stat(pid)
        if st and int(st[1][1]) == parent:
            found.append(pid)
    return found
