"""REQUIRETLS (RFC 8689, Postfix 3.12 and later) and TLS connection reuse:
a message whose sender requested REQUIRETLS never rides a connection that
was opened for a message without it, and REQUIRETLS messages share
connections among themselves.

Postfix 3.12 keeps the REQUIRETLS enforcement level in both connection
cache lookup keys (SMTP_KEY_FLAG_REQTLS_LEVEL); the series' complete TLS
policy key (SMTP_KEY_FLAG_TLS_POLICY) must keep it too.  Messages are
spaced a few seconds apart, so that only reuse across time (not qmgr's
burst caching) can carry them; connections are counted at a real Postfix
receiver that offers REQUIRETLS.  Development series only: the stable
series' base (3.10.13) has no REQUIRETLS.
"""

import subprocess
import time

import pytest

from harness import mailgen
from harness.base import POSTFIX_VERSION
from harness.world import wait_for

pytestmark = pytest.mark.skipif(
    POSTFIX_VERSION.startswith("3.10"),
    reason="REQUIRETLS arrived in Postfix 3.12: not part of the %s base"
    % POSTFIX_VERSION)

ADDR = "127.0.0.14"
NEXTHOP = "[%s]" % ADDR


def sendmail(s, rcpt, tag, requiretls):
    """Submit one message with sendmail(1); -O requiretls=yes asks for
    REQUIRETLS.  Returns its Message-ID."""
    msgid, data = mailgen.simple(rcpt, tag, 0)
    args = [s.cmd("sendmail"), "-C", s.conf, "-f", "tester@sender.test"]
    if requiretls:
        args += ["-O", "requiretls=yes"]
    subprocess.run(args + [rcpt], input=data, check=True, timeout=60)
    return msgid


def connection_of(r, msgid):
    c = r.connection_of(msgid)
    return c and (c["pid"], c["connect"])


def test_requiretls_message_never_rides_connection_without_it(world):
    r = world.postfix_receiver("r1", [ADDR], cert=world.cert("mx-r1"))
    s = world.sender({"plain.test": NEXTHOP, "req.test": NEXTHOP}, reuse=True,
                     smtp_requiretls_policy="enforce")
    # REQUIRETLS enforcement needs a certificate-matching TLS level.
    s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {
        NEXTHOP: "secure match=mx-r1.test"})
    world.start()

    first = sendmail(s, "user@plain.test", "without", requiretls=False)
    wait_for(lambda: connection_of(r, first), 30, "the message without REQUIRETLS")
    time.sleep(3)
    second = sendmail(s, "user@req.test", "with-1", requiretls=True)
    wait_for(lambda: connection_of(r, second), 30,
             "the first REQUIRETLS message\n" + s.log_tail())
    time.sleep(3)
    third = sendmail(s, "user@req.test", "with-2", requiretls=True)
    wait_for(lambda: connection_of(r, third), 30,
             "the second REQUIRETLS message\n" + s.log_tail())

    assert connection_of(r, second) != connection_of(r, first), \
        "a REQUIRETLS message rode a connection opened without REQUIRETLS"
    assert connection_of(r, third) == connection_of(r, second), \
        "REQUIRETLS messages did not share their connection\n" + s.log_tail()
    c = r.counts()
    assert c.messages == 3 and c.plaintext_messages == 0 and c.handshakes == 2, c
    s.wait_log(r"to=<user@req\.test>.*conn_use=2.*status=sent", timeout=30)
