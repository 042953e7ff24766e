"""smtp(8) creates its own TLS engine only when a delivery needs it.

With smtp_tls_connection_reuse = yes, tlsproxy(8) does every TLS handshake,
except for a destination whose policy says "connection_reuse = no".  The
patched smtp(8) then postpones creating its in-process TLS engine (an
SSL_CTX, PRNG seeding, the tlsmgr(8) cache policy) to the first delivery
that does TLS itself, unless the engine needs a certificate, key or CAfile
(files that must be opened before chroot and before dropping privileges).

The sender logs at smtp_tls_loglevel = 2, where the TLS library says
"initializing the client-side TLS engine" when it creates an engine.  The
receiver counts handshakes and plaintext messages.
"""

import re

import pytest

from harness.world import wait_for

SPACING = 3
ENGINE = r"^initializing the client-side TLS engine$"
LIBRARY = r"^initializing the client-side TLS library$"


def pids(sender, pattern):
    """PIDs of the smtp processes that logged pattern, once per line."""
    rx = re.compile(pattern)
    return [pid for (ident, pid, text) in sender.log_records()
            if ident.endswith("/smtp") and rx.search(text)]


def delivered_by(sender, domain):
    """PIDs of the smtp processes that delivered mail for domain."""
    return set(pids(sender, r"to=<[^>]*@%s>.*status=sent" % re.escape(domain)))


@pytest.mark.parametrize("level", ["encrypt", "may"])
def test_engine_waits_for_a_delivery_without_reuse(world, level):
    r = world.postfix_receiver("r1", ["127.0.0.10", "127.0.0.11"])
    s = world.sender({"proxied.test": "[127.0.0.10]:25", "local.test": "[127.0.0.11]:25"},
                     reuse=True, level=level, smtp_tls_CAfile="", smtp_tls_loglevel="2")
    s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {
        "[127.0.0.11]:25": "%s connection_reuse=no" % level})
    world.start()

    world.send(s, "user@proxied.test", n=2, spacing=SPACING)
    wait_for(lambda: len(s.grep(r"status=sent")) >= 2, 60, "2 proxied deliveries")
    assert pids(s, LIBRARY), "smtp set up the TLS library before the jail"
    assert pids(s, ENGINE) == [], "no engine in smtp while tlsproxy does TLS"
    c = r.counts()
    assert (c.messages, c.handshakes, c.plaintext_messages) == (2, 1, 0), c
    assert len(s.grep(r"TLS connection reused to 127\.0\.0\.10")) == 1

    # A policy without reuse: smtp creates its engine now, once, and the
    # message goes over TLS (never plaintext, even at level "may").
    world.send(s, "user@local.test", n=2, spacing=SPACING)
    wait_for(lambda: len(s.grep(r"status=sent")) >= 4, 60, "2 local-TLS deliveries")
    engines = pids(s, ENGINE)
    assert engines, "an engine for the connection_reuse=no policy"
    assert len(engines) == len(set(engines)), "at most one engine per process"
    assert set(engines) <= delivered_by(s, "local.test")
    c = r.counts()
    assert (c.messages, c.handshakes, c.plaintext_messages) == (4, 3, 0), c
    assert len(s.grep(r"TLS connection established to 127\.0\.0\.11", ident="smtp")) == 2

    # A process with its own engine still hands reusable TLS to tlsproxy.
    world.send(s, "user@proxied.test", n=1)
    wait_for(lambda: len(s.grep(r"status=sent")) >= 5, 60, "a proxied delivery")
    c = r.counts()
    assert (c.messages, c.handshakes, c.plaintext_messages) == (5, 3, 0), c
    assert len(s.grep(r"TLS connection reused to 127\.0\.0\.10")) == 2


def test_engine_with_files_is_created_before_the_jail(world):
    """A CAfile (or client certificate) must be opened pre-jail: the engine
    is created at start-up, as upstream does, although tlsproxy does TLS."""
    r = world.postfix_receiver("r1", ["127.0.0.10"])
    s = world.sender({"proxied.test": "[127.0.0.10]:25"}, reuse=True,
                     smtp_tls_loglevel="2")
    assert s.main["smtp_tls_CAfile"]
    world.start()
    world.send(s, "user@proxied.test", n=1)
    wait_for(lambda: len(s.grep(r"status=sent")) >= 1, 60, "1 delivery")
    assert pids(s, ENGINE), "engine created at start-up"
    assert pids(s, LIBRARY) == []
    c = r.counts()
    assert (c.messages, c.handshakes, c.plaintext_messages) == (1, 1, 0), c


def test_stock_creates_the_engine_although_tlsproxy_does_tls(world):
    """Control: upstream creates the engine in every smtp process."""
    r = world.postfix_receiver("r1", ["127.0.0.10"])
    s = world.sender({"proxied.test": "[127.0.0.10]:25"}, reuse=True, flavour="stock",
                     smtp_tls_CAfile="", smtp_tls_loglevel="2")
    world.start()
    world.send(s, "user@proxied.test", n=1)
    wait_for(lambda: len(s.grep(r"status=sent")) >= 1, 60, "1 delivery")
    assert pids(s, ENGINE), "stock creates an engine"
    c = r.counts()
    assert (c.messages, c.handshakes) == (1, 1), c
