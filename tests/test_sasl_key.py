"""With SASL client credentials configured, equivalent TLS policies do not
share a connection across nexthops (the documented exception).

Two nexthops for one receiver address, "[127.0.0.15]" and "[127.0.0.15]:25",
have the same TLS policy.  Without smtp_sasl_password_maps the patched
client shares one connection between them (test_policy_keys.py); with it,
the connection cache key also carries the nexthop (and the server host
name), so that a connection authenticated with one nexthop's credentials
never carries another nexthop's mail.  Spaced messages alternate between
the two nexthops; handshakes are counted at the receiver.
"""

import time

import pytest

from harness.world import wait_for

ADDR = "127.0.0.15"
A = "[%s]" % ADDR
B = "[%s]:25" % ADDR


@pytest.mark.parametrize("sasl", [False, True], ids=["no-sasl", "sasl"])
def test_sasl_credentials_keep_nexthops_apart(world, sasl):
    n = 4
    r = world.postfix_receiver("r1", [ADDR], cert=world.cert("mx-r1"))
    s = world.sender({"a.test": A, "b.test": B}, reuse=True)
    policy = "secure match=mx-r1.test"
    s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {A: policy, B: policy})
    if sasl:
        # The receiver offers no AUTH: mail goes unauthenticated, but the
        # client cannot know that before it connects.
        s.main["smtp_sasl_auth_enable"] = "yes"
        s.main["smtp_sasl_password_maps"] = s.write_table("sasl_passwd", {
            A: "user-a:secret-a", B: "user-b:secret-b"})
    world.start()
    for i in range(n):
        if i:
            time.sleep(2)
        world.send(s, "user@%s" % ("a.test" if i % 2 == 0 else "b.test"))
    wait_for(lambda: r.counts().messages >= n, 60, "%d messages" % n)
    s.wait_log(r"status=sent", count=n, timeout=30)
    c = r.counts()
    assert c.messages == n and c.plaintext_messages == 0, c
    # Without credentials, one connection for both nexthops.  With
    # different credentials, never one connection for both: each delivery
    # finds the other nexthop's idle connection, does not use it, and
    # closes it before it makes its own (one connection to the server at a
    # time, as without reuse).
    assert c.handshakes == (n if sasl else 1), c
    if sasl:
        assert len(s.grep(r"closed an idle cached TLS connection")) >= 1, s.log_tail()
