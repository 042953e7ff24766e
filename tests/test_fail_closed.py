"""Fail closed: with TLS reuse on and tlsproxy unavailable, mail at level
encrypt is deferred and stays queued; nothing reaches the receiver, in
plaintext or otherwise.  Once tlsproxy is back, each message is delivered
exactly once."""

import time

from harness.world import wait_for


def test_tlsproxy_unavailable_defers_then_delivers_once(world):
    n = 3
    r = world.postfix_receiver("r1", ["127.0.0.10"])
    s = world.sender({"d1.test": "[127.0.0.10]:25"}, reuse=True, tlsproxy=False,
                     default_destination_concurrency_failed_cohort_limit=10)
    world.start()
    ids = world.send(s, "user@d1.test", n=n)
    s.wait_log(r"status=deferred", count=n, timeout=60)

    # The receiver saw the client (EHLO, STARTTLS) but accepted no mail.
    c = r.counts()
    assert c.connections >= 1
    assert c.messages == 0 and c.plaintext_messages == 0 and c.handshakes == 0
    assert s.grep(r"private/tlsproxy")                  # why, for the admin
    assert not s.grep(r"status=sent")
    assert len(s.queued()) == n

    # tlsproxy comes back: every message is delivered once.
    s.tlsproxy = True
    s.reload()
    s.flush()
    wait_for(lambda: r.counts().messages >= n, 60, "delivery after tlsproxy is back")
    time.sleep(3)                                       # room for duplicates
    c = r.counts()
    assert c.messages == n and c.plaintext_messages == 0
    assert sorted(r.message_ids()) == sorted(ids)
    wait_for(lambda: s.queued() == [], 20, "an empty sender queue")
