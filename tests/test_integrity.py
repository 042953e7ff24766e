"""Message content arrives byte-identical: long lines, 8-bit text, lines that
start with dots, a 5 MB attachment; TLS reuse off and on; at a Postfix
receiver and at aiosmtpd.  The body (everything after the header) is compared
by SHA-256; the original header fields must be present unchanged."""

import pytest

from harness import mailgen
from harness.world import wait_for


@pytest.mark.parametrize("reuse", [False, True], ids=["reuse-off", "reuse-on"])
@pytest.mark.parametrize("peer", ["postfix", "aiosmtpd"])
def test_content_integrity(world, peer, reuse):
    if peer == "postfix":
        r = world.postfix_receiver("r1", ["127.0.0.12"], store=True)
    else:
        r = world.aio_receiver("aio", "127.0.0.12")
    s = world.sender({"d1.test": "[127.0.0.12]:25"}, reuse=reuse)
    world.start()
    sent = mailgen.integrity_set("user@d1.test", world.name)
    for name, msgid, data in sent:
        world.send(s, "user@d1.test", message=lambda i, m=msgid, d=data: (m, d))
    wait_for(lambda: len(r.messages()) >= len(sent), 120, "all messages stored")
    got = {mailgen.header(m, "Message-ID"): m for m in r.messages()}
    assert len(got) == len(sent)
    for name, msgid, data in sent:
        assert msgid in got, "%s: not received" % name
        rx = got[msgid]
        assert mailgen.body_sha256(rx) == mailgen.body_sha256(data), \
            "%s: body differs" % name
        for field in ("Subject", "From", "To", "Content-Type",
                      "Content-Transfer-Encoding", "MIME-Version"):
            assert mailgen.header(rx, field) == mailgen.header(data, field), \
                "%s: %s header differs" % (name, field)
    assert r.counts().plaintext_messages == 0
