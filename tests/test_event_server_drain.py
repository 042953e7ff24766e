"""event_server(3) after a drain: no "available" report to the master.

Issue 20, item 6a.  "tlsproxy(8), scache(8): out of descriptors, deliver
without caching" made an event server that has no descriptors to spare for
another client report itself busy (MASTER_STAT_TAKEN) and stop accepting
for a second; event_server_accept_resume() then reported it available
again (MASTER_STAT_AVAIL), also in a process that event_server_drain() had
forked to finish its clients in the background (after "postfix reload" or
at retirement): that process has closed its listen sockets, and it wrote
the report under the process ID of the process that it was forked from.

The test plays the master(8) for one tlsproxy(8) process, as
master_spawn.c starts it: the flow pipe on descriptors 3 and 4, the status
pipe on 5 (the test reads the 12-byte MASTER_STATUS records), a listening
UNIX-domain socket on 6, GENERATION in the environment.  The process runs
with a low open file limit, and clients connect every 50 ms without saying
anything, so that it runs out of descriptors and pauses again and again.
With max_idle = 2s and max_use = 2 it retires after 4 s: tlsproxy's
slow exit calls event_server_drain(), the process that the test started
exits, and its child finishes the clients.  After that exit, the status
pipe must stay silent: with -v, master_notify() logs each report, and no
"master_notify: status 1" may come from the drained child.  Before this
change: one, within a second of the drain, written under the exited
process's ID.
"""

import os
import re
import resource
import socket
import struct
import subprocess
import threading
import time
import uuid

MASTER_STAT_TAKEN, MASTER_STAT_AVAIL = 0, 1


def test_no_avail_after_drain(world):
    s = world.sender({"d1.test": "[127.0.0.37]:25"}, reuse=True)
    world.start()
    tlsproxy = os.path.join(s.inst, "libexec", "postfix", "tlsproxy")
    name = "drain-" + uuid.uuid4().hex[:12]      # also finds our processes
    path = os.path.join(s.base, "drain-test.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(256)
    lsock.setblocking(False)
    flow_r, flow_w = os.pipe()
    stat_r, stat_w = os.pipe()

    def child_fds():
        # Descriptors as master(8) passes them, and a low open file limit.
        for fd, want in ((flow_r, 3), (flow_w, 4), (stat_w, 5), (lsock.fileno(), 6)):
            os.dup2(fd, want + 20)
        for want in (3, 4, 5, 6):
            os.dup2(want + 20, want)
            os.close(want + 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))

    env = dict(os.environ, MAIL_CONFIG=s.conf, GENERATION="0")
    proc = subprocess.Popen(
        [tlsproxy, "-z", "-n", name, "-t", "unix", "-u", "-v",
         "-o", "max_idle=2s", "-o", "max_use=2"],
        env=env, preexec_fn=child_fds, pass_fds=(3, 4, 5, 6),
        stdin=subprocess.DEVNULL, close_fds=True)
    os.close(stat_w)
    os.close(flow_r)

    clients, stop = [], threading.Event()

    def connect():
        while not stop.is_set() and len(clients) < 200:
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(1)
            try:
                c.connect(path)
            except OSError:
                c.close()
            else:
                clients.append(c)
            time.sleep(0.05)

    records = []

    def read_status():
        while True:
            data = os.read(stat_r, 12)
            if len(data) < 12:
                return
            pid, gen, avail = struct.unpack("iIi", data)
            records.append((time.time(), pid, avail))

    t_conn = threading.Thread(target=connect, daemon=True)
    t_stat = threading.Thread(target=read_status, daemon=True)
    t_conn.start()
    t_stat.start()
    try:
        proc.wait(timeout=30)
        exited = time.time()
        time.sleep(2.5)
    finally:
        stop.set()
        t_conn.join()
        # The drained child (the one process of this test still running).
        pids = subprocess.run(["pgrep", "-f", "-- -n %s " % name],
                              capture_output=True, text=True).stdout.split()
        for pid in map(int, pids):
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        for c in clients:
            c.close()
        lsock.close()
        os.close(flow_w)
    assert proc.returncode == 0
    # With -v, master_notify() logs every report.  The process that the test
    # started reports under its own ID; after "time to retire -- draining"
    # it has exited, and anything that follows under another process ID is
    # the drained child's.
    recs = [(pid, text) for (ident, pid, text) in s.log_records()
            if ident.endswith("/tlsproxy")]
    texts = [t for (pid, t) in recs if pid == proc.pid]
    assert any(re.match(r"warning: accept connection: Too many open files: \d+ "
                        r"clients; new clients go to other %s processes" % name, t)
               for t in texts), "the process never ran out of descriptors"
    assert "time to retire -- draining" in texts, texts[-10:]
    before = [t for t in texts[:texts.index("time to retire -- draining")]
              if t.startswith("master_notify: status")]
    # Precondition: the drain came while the process was paused for lack
    # of descriptors (its last report: busy), so that the accept pause timer
    # was pending in the drained child.
    assert before[-1] == "master_notify: status %d" % MASTER_STAT_TAKEN, before[-5:]
    drained = [(pid, t) for (pid, t) in recs if pid != proc.pid
               and t.startswith("master_notify: status %d" % MASTER_STAT_AVAIL)]
    assert not drained, drained
    assert not [r for r in records if r[0] >= exited and r[2] == MASTER_STAT_AVAIL], records[-5:]
