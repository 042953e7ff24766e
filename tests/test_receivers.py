"""The receiver counts that every reuse test relies on (harness/receivers.py).

A message counts when the receiver has accepted it at the end of DATA, not
when its smtpd accepted the first recipient: a transfer that breaks off in
DATA never counts.  A connection is named by its smtpd pid plus that
smtpd's "connect from" (one smtpd process serves connections one after
another), and the messages accepted over it are listed with it.
"""

import smtplib

from harness.mailgen import simple
from harness.world import wait_for

ADDR = "127.0.0.51"


def test_counts_at_end_of_data(world):
    # One smtpd process, which serves every connection in turn.
    r = world.postfix_receiver("r1", [ADDR], default_process_limit=1)
    world.start()

    # A transfer that breaks off in DATA, after the headers.
    msgid, data = simple("user@r.test", "aborted", 0)
    smtp = smtplib.SMTP(ADDR, 25, timeout=30)
    smtp.ehlo("client.test")
    smtp.mail("tester@sender.test")
    smtp.rcpt("user@r.test")
    code, _ = smtp.docmd("DATA")
    assert code == 354
    smtp.send(data[:len(data) // 2])
    smtp.close()
    r.wait_log(r"lost connection after DATA", ident="smtpd")

    # Two complete messages, over two connections.
    ids = []
    for i in range(2):
        msgid, data = simple("user@r.test", "complete", i)
        with smtplib.SMTP(ADDR, 25, timeout=30) as smtp:
            smtp.sendmail("tester@sender.test", ["user@r.test"], data)
        ids.append(msgid)
    wait_for(lambda: len(r.accepted_ids()) >= 2, 30, "the complete messages")
    r.wait_log(r"^disconnect from", count=3, ident="smtpd")

    c = r.counts()
    assert (c.connections, c.messages, c.plaintext_messages) == (3, 2, 2), c
    assert r.counts(ADDR).messages == 2
    conns = r.connections()
    assert [x["messages"] for x in conns] == [[], [ids[0]], [ids[1]]]
    assert all(x["disconnected"] for x in conns)
    # The same pid, and still two connections.
    a, b = r.connection_of(ids[0]), r.connection_of(ids[1])
    assert a["pid"] == b["pid"] and a["connect"] != b["connect"]
