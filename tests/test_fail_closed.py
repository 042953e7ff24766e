"""Never worse than reuse off: with TLS reuse on and the tlsproxy service
missing from master.cf, mail at level encrypt is delivered over TLS by the
smtp(8) process itself (as with reuse off), exactly once, and nothing
reaches the receiver in plaintext.  Once tlsproxy is back, connections are
reused again.  (When smtp(8) has no TLS engine of its own either, the
delivery is deferred: test_tls_engine.py.)"""

import time

from harness.world import wait_for


def test_tlsproxy_unavailable_delivers_over_tls_once(world):
    n = 3
    r = world.postfix_receiver("r1", ["127.0.0.10"])
    s = world.sender({"d1.test": "[127.0.0.10]:25"}, reuse=True, tlsproxy=False,
                     default_destination_concurrency_failed_cohort_limit=10)
    world.start()
    ids = world.send(s, "user@d1.test", n=n)
    s.wait_log(r"status=sent", count=n, timeout=60)

    # Every message over its own TLS connection, none in plaintext, none
    # deferred.
    c = r.wait_messages(n)
    assert c.messages == n and c.plaintext_messages == 0
    assert c.handshakes == c.connections, c
    assert s.grep(r"private/tlsproxy")                  # why, for the admin
    assert not s.grep(r"status=deferred")
    assert sorted(r.message_ids()) == sorted(ids)

    # tlsproxy comes back: spaced mail is delivered once each, over one
    # reused TLS connection (a restart: the smtp processes that gave up
    # on tlsproxy(8) do not stay).
    s.tlsproxy = True
    s.stop()
    s.start()
    more = world.send(s, "user@d1.test", n=n, spacing=2, tag="back")
    wait_for(lambda: r.counts().messages >= 2 * n, 60, "delivery after tlsproxy is back")
    time.sleep(3)                                       # room for duplicates
    c2 = r.counts()
    assert c2.messages == 2 * n and c2.plaintext_messages == 0
    assert c2.handshakes == c.handshakes + 1, c2
    assert sorted(r.message_ids()) == sorted(ids + more)
    wait_for(lambda: s.queued() == [], 20, "an empty sender queue")
