"""Bugs that upstream found later in the code that TLS reuse exercises.

Issue 13, item 10.  Upstream's 3.12 snapshots report three bugs in code
that 3.10.13 also has.  Our own analysis of 3.10.13:

- tlsproxy(8) closes the plaintext descriptor twice when a proxied
  connection ends: nbbio_free() closes it, then event_server_disconnect()
  closes the VSTREAM on the same descriptor.  Affects 3.10.13 (every
  proxied connection, reuse on or off).  Test: tlsproxy under strace
  (close() calls only); no close() may fail with EBADF.
- tlsproxy(8) never sets TLSP_STATE.ssl_last_err before its first
  tlsp_eval_tls_error() call.  Does not affect 3.10.13 in practice:
  mymalloc(3) fills every allocation with 0xff, so the field starts as -1,
  which is no SSL_ERROR_* value, and the first call enables the event that
  the handshake needs, as if the field had been initialised to "none"
  (valgrind memcheck of tlsproxy reports no use of uninitialised values
  for the same traffic as below).  No patch, no test.
- scache_single(3) does not cancel the timers of busy entries when it is
  destroyed.  Does not affect 3.10.13: no daemon links it (smtp(8) uses
  scache_clnt(3) whenever it caches, scache(8) uses scache_multi(3));
  only the src/global "scache" test program does.  No test here.
"""

import glob
import os
import re
import shutil

import pytest

from harness.base import POSTFIX_VERSION
from harness.world import wait_for

STRACE = shutil.which("strace")
ADDRS = ["127.0.0.36", "127.0.0.37"]
DOMAINS = ["u%d.test" % i for i in range(4)]


def world_with(world, wrapper, cache_time=4, flavour="patched"):
    """A receiver on two addresses, a sender (reuse on, short cache time so
    that cached connections expire and their tlsproxy side is torn down
    during the test) whose tlsproxy runs through wrapper."""
    r = world.postfix_receiver("r1", ADDRS)
    s = world.sender({d: "[%s]:25" % ADDRS[i % 2] for i, d in enumerate(DOMAINS)},
                     reuse=True, cache_time=cache_time, flavour=flavour,
                     smtp_tls_connection_cache_time_limit="%ds" % cache_time,
                     smtp_starttls_timeout="60s", smtp_data_done_timeout="60s")
    logdir = os.path.join(s.base, "trace")
    os.makedirs(logdir)
    os.chmod(logdir, 0o1777)
    s.wrap_daemons({"tlsproxy": wrapper % {"dir": logdir}})
    return r, s, logdir


def traffic(world, r, s):
    """Spaced messages (a cached connection reused), a burst to 4 domains,
    then a pause longer than the cache time: connections expire, and
    tlsproxy tears them down."""
    ids = world.send(s, "user@u0.test", n=4, spacing=1)
    for i in range(12):
        ids += world.send(s, "user%d@%s" % (i, DOMAINS[i % 4]), n=1)
    wait_for(lambda: set(ids) <= set(r.accepted_ids()), 180,
             "every message accepted\n" + s.log_tail())
    assert r.counts().plaintext_messages == 0
    assert s.conn_uses(), "no connection was reused"
    wait_for(lambda: len(s.grep(r"DISCONNECT", ident="tlsproxy"))
             >= r.counts().connections, 60, "every proxied connection closed")
    return ids


def tracing(logdir):
    """Whether a process (strace) with logdir in its arguments still runs."""
    for d in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(d, "rb") as f:
                if logdir.encode() in f.read():
                    return True
        except OSError:
            pass
    return False


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
@pytest.mark.parametrize("flavour", ["patched", "stock"])
def test_tlsproxy_closes_each_descriptor_once(world, flavour):
    """Patched: every close() in tlsproxy succeeds.  Stock 3.10.13: close()
    calls fail with EBADF (the second close of a plaintext descriptor).
    Stock 3.12-20260821 fixed that itself (NBBIO_FLAG_OWN_FD), so the
    development series dropped its own fix, and stock must close once too."""
    # -D: strace runs as a detached grandchild, so that tlsproxy keeps the
    # process ID that the master(8) daemon knows.
    r, s, logdir = world_with(
        world, 'exec %s -D -f -e trace=close -o %%(dir)s/tlsproxy.strace '
               '"$REAL" "$@"' % STRACE, flavour=flavour)
    world.start()
    traffic(world, r, s)
    # Every proxied connection is gone: its plaintext descriptor (moved
    # above 127 by the event_server(3) skeleton) must be closed, not leaked.
    pids = s.children("tlsproxy")
    assert pids, "no tlsproxy process"
    for pid in pids:
        high = [int(fd) for fd in os.listdir("/proc/%d/fd" % pid) if int(fd) >= 128]
        assert not high, "tlsproxy %d still holds %s" % (pid, high)
    s.stop()
    # The tracers finish writing when their tracees have exited.
    wait_for(lambda: not tracing(logdir), 30, "strace to exit")
    traces = glob.glob(os.path.join(logdir, "tlsproxy.strace*"))
    assert traces
    text = "".join(open(p, errors="replace").read() for p in traces)
    closes = re.findall(r"close\(\d+\)\s+= (-?\d+)(.*)", text)
    assert len(closes) > 10, text[-2000:]
    bad = [c for c in closes if c[0] != "0"]
    if flavour == "stock" and POSTFIX_VERSION.startswith("3.10"):
        assert bad and all("EBADF" in c[1] for c in bad), bad[:5]
        return
    assert not bad, "close() failed in tlsproxy: %s" % bad[:5]
