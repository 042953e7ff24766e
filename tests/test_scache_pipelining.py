"""Link saves in one exchange with scache(8), and with an older scache.

Issue 22, item 6.  After smtp(8) saves a connection in scache(8), it saves
up to four destination lookup keys that link to it (next-hop name, the
weaker TLS levels that may ride it, idle connections to the server).  Each
was a request of its own, and every scache request costs a pass through
scache and a busy and an idle report to the master.  smtp(8) now sends the
links in one write and reads the replies after; scache(8) keeps what a
client sends ahead (a double-buffered client stream) and answers the whole
batch in one pass.

An scache(8) from before this change answers only the first request of a
batch and drops the rest without a trace: with a single buffer, writing a
reply discards unread input.  During an upgrade such an scache may still be
running; smtp(8) sees one reply where it expected several, reconnects, and
from then on sends one request at a time.

- test_requests_sent_at_once: three save_dest requests in one write, played
  by the test (harness.scacheclient): the series' scache answers three and
  saves three links; stock's answers one and saves one (upstream's
  behaviour, asserted so that a change there shows).
- test_links_with_scache: a strict policy's connection, ridden by a weaker
  policy's message, found again by the strict policy (three messages 2 s
  apart, one TLS handshake at the receiver): the ride link is the second of
  a batch, so it is saved only if the whole batch is.  With the series'
  scache and with stock's scache binary run by the same sender (the
  fallback); no warning either way.  Against a build that sends at once
  without the fallback (an older state of this change), the stock-scache
  case fails: the sender times out waiting for replies ("problem talking
  to service private/scache") and disables caching.
- test_scache_passes_per_delivery: the read() system calls of scache(8)
  (/proc/PID/io syscr) per delivery where nothing is found, three spaced
  deliveries to three addresses: 6 (4 look-ups, the connection, one batch
  of links), where one request at a time made 8.
"""

import os
import select
import socket
import time

import pytest

from harness.postfix import INST
from harness.scacheclient import ScacheClient
from harness.world import wait_for

STOCK_SCACHE = os.path.join(INST, "stock", "libexec", "postfix", "scache")


def encode_list(*pairs):
    data = b""
    for name, value in pairs:
        data += name.encode() + b"\0" + str(value).encode("latin-1") + b"\0"
    return data + b"\0"


def save_dest(label, endp_label):
    return encode_list(("request", "save_dest"), ("ttl", 30), ("label", label),
                       ("property", "prop"), ("label", endp_label))


def find_dest(client, label):
    """(status, endpoint properties) of a find_dest request; on success the
    descriptor is received (with scache_clnt(3)'s dummy lists before and
    after it) and closed."""
    client.sock.sendall(encode_list(("request", "find_dest"), ("label", label)))
    reply = client._read_list()
    if int(reply["status"]) == 0:
        client.sock.sendall(encode_list(("dummy", "")))
        _, fds, _, _ = socket.recv_fds(client.sock, 1, 1)
        client.sock.sendall(encode_list(("dummy", "")))
        for fd in fds:
            socket.close(fd)
    return int(reply["status"]), reply.get("property")


def replies_within(client, seconds):
    """The reply lists that arrive within seconds."""
    replies = []
    while select.select([client.sock], [], [], seconds)[0]:
        replies.append(client._read_list())
    return replies


def use_stock_scache(s):
    if not os.path.exists(STOCK_SCACHE):
        pytest.fail("%s is not built (make build-stock)" % STOCK_SCACHE)
    s.wrap_daemons({"scache": 'exec -a "$0" %s "$@"' % STOCK_SCACHE})


@pytest.mark.parametrize("scache", ["patched", "stock"])
def test_requests_sent_at_once(world, scache):
    s = world.sender({"d1.test": "[127.0.0.50]:25"}, reuse=True)
    if scache == "stock":
        use_stock_scache(s)
    world.start()
    with ScacheClient(s.queue) as c:
        keep = []
        for n in range(3):
            a, b = socket.socketpair()
            keep.append(b)
            assert c.save_endp(30, "endp-%d" % n, "endp-prop-%d" % n, a.detach())
        c.sock.sendall(b"".join(save_dest("dest-%d" % n, "endp-%d" % n)
                                for n in range(3)))
        replies = replies_within(c, 3)
        expect = 3 if scache == "patched" else 1
        assert replies == [{"status": "0"}] * expect, replies
        # In step: each later request gets its own answer.
        for n in range(3):
            found = find_dest(c, "dest-%d" % n)
            if n < expect:
                assert found == (0, "endp-prop-%d" % n), (n, found)
            else:
                assert found[0] != 0, (n, found)
        for b in keep:
            b.close()
    assert not s.grep(r"warning|panic|fatal"), s.log_tail()


ADDR = "127.0.0.51"
WEAK = "[%s]" % ADDR
STRICT = "[%s]:25" % ADDR


@pytest.mark.parametrize("scache", ["patched", "stock"])
def test_links_with_scache(world, scache):
    cert = world.cert("mx-r1")
    r = world.postfix_receiver("r1", [ADDR], cert=cert)
    s = world.sender({"weak.test": WEAK, "strict.test": STRICT}, reuse=True)
    s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {
        WEAK: "may", STRICT: "verify match=mx-r1.test"})
    if scache == "stock":
        use_stock_scache(s)
    world.start()
    for i, kind in enumerate(["strict", "weak", "strict"]):
        if i:
            time.sleep(2)
        world.send(s, "user@%s.test" % kind, tag="%s-%d" % (kind, i))
        wait_for(lambda: r.counts().messages > i, 30,
                 "message %d (%s)\n%s" % (i, kind, s.log_tail()))
    c = r.counts()
    assert (c.messages, c.plaintext_messages, c.handshakes) == (3, 0, 1), \
        (c, s.log_tail())
    s.wait_log(r"to=<user@strict\.test>.*conn_use=3.*status=sent", timeout=30)
    assert not s.grep(r"warning|panic|fatal"), s.log_tail()


def read_calls(pid):
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            if line.startswith("syscr:"):
                return int(line.split()[1])
    raise AssertionError("no syscr in /proc/%d/io" % pid)


def test_scache_passes_per_delivery(world):
    addrs = ["127.0.0.%d" % n for n in (52, 53, 54)]
    r = world.postfix_receiver("r1", addrs)
    s = world.sender({"d%d.test" % n: "[%s]:25" % a for n, a in enumerate(addrs)},
                     reuse=True)
    world.start()
    # scache starts with the first request; a first delivery starts it.
    world.send(s, "user@d0.test", tag="start")
    wait_for(lambda: r.counts().messages >= 1, 30, "the first message")
    time.sleep(2)
    [pid] = wait_for(lambda: s.children("scache"), 10, "scache")
    before = read_calls(pid)
    for n in range(1, 3):
        world.send(s, "user@d%d.test" % n, tag="d%d" % n)
        wait_for(lambda: r.counts().messages >= n + 1, 30, "message %d" % n)
        time.sleep(2)
    reads = read_calls(pid) - before
    assert s.children("scache") == [pid]
    c = r.counts()
    assert (c.messages, c.handshakes) == (3, 3), c
    print("scache read() calls for 2 deliveries: %d" % reads)
    assert reads <= 2 * 6, (reads, s.log_tail())
    assert not s.grep(r"warning|panic|fatal"), s.log_tail()
