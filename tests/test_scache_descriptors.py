"""scache(8)'s descriptor budget, talked to directly (harness.scacheclient).

Issue 20, item 6.  "tlsproxy(8), scache(8): out of descriptors, deliver
without caching" made scache(8) cache no more connections than its open file
limit minus 16 descriptors for itself and one for each client that may
connect (at most half of the rest).  The sender's scache runs under a
lowered open file limit (ulimit -n), and the test plays the smtp(8)
clients: it hands scache connections of its own (one end of a socketpair)
with save_endp requests.

- 6b: the reserve was $default_process_limit clients, although the maxproc
  column of smtp(8)/lmtp(8) in master.cf may allow more, and every such
  process keeps its own connection to scache.  scache cannot read
  master.cf; it now reserves room for $default_process_limit clients or for
  the most clients that were connected at the same time, whichever is
  larger.  ulimit -n 80, default_process_limit = 4: after 21 clients were
  connected at once, the cache holds 80 - 16 - 21 = 43 connections, and a
  second wave of 20 clients is served.  Before: 60 cached, and about half of
  the second wave got no answer (accept() out of descriptors).
- 6c: a save_endp request that comes without a descriptor (recvmsg()
  succeeds, no SCM_RIGHTS) after a connection was refused for lack of room
  was reported as descriptor exhaustion (a stale EMFILE in errno) and
  counted in the statistics.  Now: "unable to receive file descriptor: none
  was sent", and only the real refusal is counted.
"""

import re
import socket
import time

from harness.scacheclient import ScacheClient
from harness.world import wait_for


def scache_world(world, limit, **main):
    s = world.sender({"d1.test": "[127.0.0.36]:25"}, reuse=True,
                     connection_cache_status_update_time="2s", **main)
    s.wrap_daemons({"scache": 'ulimit -n %d\nexec -a "$0" "$REAL" "$@"' % limit})
    world.start()
    return s


def save(client, i):
    a, b = socket.socketpair()
    b.close()
    return client.save_endp(30, "test-label-%d" % i, "prop", a.detach())


def fill(client, most=200):
    """Save connections until scache refuses one; the number saved."""
    for i in range(most):
        if not save(client, i):
            return i
    raise AssertionError("scache took %d connections" % most)


def served(clients, queue, timeout=3):
    """Connect that many new clients at once; (how many of them got scache's
    announcement and an answer, the clients to close)."""
    ok, open_clients = 0, []
    for _ in range(clients):
        try:
            c = ScacheClient(queue, timeout=timeout)
        except (OSError, EOFError, RuntimeError):
            continue
        open_clients.append(c)
        try:
            if c.find_endp("no-such-label") is None:
                ok += 1
        except (OSError, EOFError):
            pass
    return ok, open_clients


def refused_stats(s):
    return sum(int(m) for t in s.grep(r"statistics: connections not cached "
                                      r"for lack of descriptors=\d+", "scache")
               for m in re.findall(r"descriptors=(\d+)", t))


def test_reserve_follows_clients(world):
    limit, procs, wave = 80, 4, 20
    s = scache_world(world, limit, default_process_limit=str(procs))
    # Wave 1: 20 clients at once, plus the one that saves below.
    first = [ScacheClient(s.queue) for _ in range(wave)]
    saver = ScacheClient(s.queue)
    for c in first:
        c.close()
    saved = fill(saver)
    assert saved == limit - 16 - (wave + 1), saved
    s.wait_log(r"cannot cache more connections: Too many open files: %d "
               r"cached, room for %d .*%d clients" % (saved, saved, wave + 1),
               ident="scache")
    # Wave 2: as many clients again, while the cache is full.
    ok, second = served(wave, s.queue)
    for c in second:
        c.close()
    assert ok == wave, (ok, saved)
    saver.close()


def test_no_descriptor_is_not_exhaustion(world):
    limit = 40
    s = scache_world(world, limit)
    with ScacheClient(s.queue) as c:
        saved = fill(c)
        assert saved == (limit - 16) // 2, saved
        s.wait_log(r"cannot cache more connections", ident="scache")
        # A save_endp request with no descriptor: the dummy byte only.
        c._write_list(("request", "save_endp"), ("ttl", 30),
                      ("label", "no-fd"), ("property", "prop"))
        c._read_list()
        c.sock.sendall(b"\0")
        assert int(c._read_list()["status"]) != 0
        s.wait_log(r"unable to receive file descriptor: none was sent",
                   ident="scache", timeout=10)
    # Statistics every 2 s: one connection refused for lack of room.
    wait_for(lambda: refused_stats(s) >= 1, 20, "scache statistics")
    time.sleep(3)
    assert refused_stats(s) == 1, s.grep(r"statistics", "scache")
