"""tlsproxy(8)'s plaintext buffers: released when idle, not per I/O event.

Issue 20, item 6d.  "nbbio(3), tlsproxy(8): no plaintext buffers for idle
connections" made nbbio(3) allocate its buffers on first use and tlsproxy
release empty ones after every I/O round: an idle cached connection holds
no plaintext buffer (W6), but an active connection allocated and freed a
16 kbyte buffer with every I/O event (the write buffer before each
SSL_read() loop, the read buffer with each plaintext read), and
NBBIO_READ_BUF()/NBBIO_WRITE_BUF() allocated as a side effect.  Now the
buffers are released only when a connection is idle (both empty, and a
round that moved no data).

The sender's tlsproxy runs under valgrind with --trace-malloc, which logs
every malloc() and free() with its size and address.  A plaintext buffer of
a client-role connection is one mymalloc(TLS_PROXY_CLIENT_BUFSIZE = 16384)
and thus one malloc() of 16384 plus mymalloc()'s 16-byte header (OpenSSL's
record buffers have other sizes).  Traffic: one 2 Mbyte message (128 full
plaintext buffers), then one small message over the cached connection.

Asserted: the 2 Mbyte message costs a few buffer allocations, not one per
16 kbytes moved (before this change: 265 for the message, one or two per
I/O event; after: 7); and once the connection is idle in the cache, no
plaintext buffer is allocated (every one was freed: W6's memory result).
"""

import os
import re
import shutil
import time

import pytest

from harness.world import wait_for

VALGRIND = shutil.which("valgrind")
BUF_MALLOC = 16384 + 16                 # TLS_PROXY_CLIENT_BUFSIZE + MBLOCK header
BIG = 2 * 1024 * 1024


def big_message(rcpt, tag):
    msgid = "<%s.big@sender.test>" % tag
    line = b"x" * 998 + b"\r\n"
    body = line * (BIG // len(line))
    head = ("From: tester@sender.test\r\nTo: %s\r\nSubject: big\r\n"
            "Message-ID: %s\r\n\r\n" % (rcpt, msgid)).encode()
    return msgid, head + body


def buffer_allocs(logdir):
    """(plaintext buffer mallocs, of those still allocated) over all traced
    tlsproxy processes."""
    mallocs = 0
    live = set()
    rx = re.compile(r"^--(\d+)-- (?:malloc\((\d+)\) = (0x[0-9A-Fa-f]+)|"
                    r"free\((0x[0-9A-Fa-f]+)\))")
    for name in os.listdir(logdir):
        with open(os.path.join(logdir, name), errors="replace") as f:
            for line in f:
                m = rx.match(line)
                if not m:
                    continue
                pid = m.group(1)
                if m.group(2) is not None:
                    if int(m.group(2)) == BUF_MALLOC:
                        mallocs += 1
                        live.add((pid, m.group(3)))
                else:
                    live.discard((pid, m.group(4)))
    return mallocs, len(live)


@pytest.mark.skipif(VALGRIND is None, reason="no valgrind")
def test_plaintext_buffers_not_per_event(world):
    r = world.postfix_receiver("r1", ["127.0.0.35"])
    s = world.sender({"d1.test": "[127.0.0.35]:25"}, reuse=True,
                     smtp_tls_connection_cache_time_limit="30s",
                     smtp_data_done_timeout="600s")
    logdir = os.path.join(s.base, "valgrind")
    os.makedirs(logdir)
    os.chmod(logdir, 0o1777)
    s.wrap_daemons({"tlsproxy": 'exec %s --tool=memcheck --trace-malloc=yes '
                                '--log-file=%s/tlsproxy.%%p.log "$REAL" "$@"'
                                % (VALGRIND, logdir)})
    world.start()
    world.send(s, "user@d1.test", message=lambda i: big_message("user@d1.test", world.name))
    s.wait_log(r"status=sent", timeout=300)
    big_allocs, _ = buffer_allocs(logdir)
    world.send(s, "user@d1.test")
    s.wait_log(r"status=sent", count=2, timeout=120)
    assert s.conn_uses() == [2], s.log_tail()
    # The reply to the last command has reached smtp(8): give tlsproxy a
    # moment to finish its round, then look at what it holds.
    time.sleep(2)
    total, live = buffer_allocs(logdir)
    assert r.counts().messages == 2
    # Per conversation turn (handshake status, EHLO..., MAIL..DATA, the
    # content, QUIT is not sent): a handful; one per 16 kbytes would be
    # over 128.
    assert 0 < big_allocs <= 24, (big_allocs, total)
    assert live == 0, (big_allocs, total, live)
