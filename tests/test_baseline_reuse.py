"""Baseline TLS connection reuse, counted at the receiving side.

Messages are sent spaced 3 s apart: a back-to-back burst would be reused by
qmgr's on-demand connection caching even when TLS reuse is broken, so only
spaced mail shows whether a TLS connection survives between deliveries.  The
sender raises smtp_connection_cache_time_limit and connection_cache_ttl_limit
above the spacing (stock scache silently caps cache times at 2 s).
"""

import pytest

from harness.world import wait_for

N = 20
SPACING = 3


@pytest.mark.parametrize("flavour, reuse", [
    ("patched", False), ("patched", True), ("stock", True)],
    ids=["patched-reuse-off", "patched-reuse-on", "stock-reuse-on"])
def test_spaced_messages_postfix_receiver(world, flavour, reuse):
    r = world.postfix_receiver("r1", ["127.0.0.10"])
    s = world.sender({"d1.test": "[127.0.0.10]:25"}, reuse=reuse, flavour=flavour)
    world.start()
    ids = world.send(s, "user@d1.test", n=N, spacing=SPACING)
    wait_for(lambda: r.counts().messages >= N, 60, "%d messages at the receiver" % N)
    # The receiver logs a message before the sender logs its delivery.
    wait_for(lambda: len(s.grep(r"status=sent")) >= N, 30, "%d deliveries logged" % N)
    c = r.counts()
    assert c.messages == N
    wait_for(lambda: len(r.message_ids()) >= len(ids), 30, "their Message-IDs logged")
    assert sorted(r.message_ids()) == sorted(ids), "each message exactly once"
    assert c.plaintext_messages == 0
    if reuse:
        assert (c.connections, c.handshakes) == (1, 1), c
        assert s.conn_uses() == list(range(2, N + 1))
        assert len(s.grep(r"TLS connection reused to 127\.0\.0\.10")) == N - 1
    else:
        assert (c.connections, c.handshakes) == (N, N), c
        assert s.conn_uses() == []


def test_spaced_messages_aiosmtpd_receiver(world):
    """The same with a different SMTP/TLS implementation on the far side."""
    n = 10
    r = world.aio_receiver("aio", "127.0.0.11")
    s = world.sender({"d2.test": "[127.0.0.11]:25"}, reuse=True)
    world.start()
    ids = world.send(s, "user@d2.test", n=n, spacing=SPACING)
    wait_for(lambda: r.counts().messages >= n, 60, "%d messages at aiosmtpd" % n)
    wait_for(lambda: len(s.grep(r"status=sent")) >= n, 30, "%d deliveries logged" % n)
    c = r.counts()
    assert c.messages == n and c.plaintext_messages == 0
    wait_for(lambda: len(r.message_ids()) >= len(ids), 30, "their Message-IDs logged")
    assert sorted(r.message_ids()) == sorted(ids)
    assert (c.connections, c.handshakes) == (1, 1), c
    assert s.conn_uses() == list(range(2, n + 1))


def test_control_spaced_mail_not_reused_past_stock_ttl_cap(world):
    """Negative control: the counts above can show broken reuse.  Stock
    scache caps every cache time at connection_cache_ttl_limit (default
    2 s), so with that default, mail spaced 3 s apart gets a new connection
    and handshake each time although smtp_tls_connection_reuse = yes."""
    n = 6
    r = world.postfix_receiver("r1", ["127.0.0.10"])
    s = world.sender({"d1.test": "[127.0.0.10]:25"}, reuse=True, flavour="stock")
    del s.main["connection_cache_ttl_limit"]
    world.start()
    world.send(s, "user@d1.test", n=n, spacing=SPACING)
    wait_for(lambda: r.counts().messages >= n, 60, "%d messages" % n)
    c = r.counts()
    assert (c.messages, c.connections, c.handshakes) == (n, n, n), c
    assert s.conn_uses() == []
