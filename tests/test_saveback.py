"""What smtp(8) does with a cached TLS connection that it finds by server
address and does not use (issue 13, items 2 and 3).

unparsable: a cached entry whose properties this build cannot parse (as
    an older or newer build could have written them) is closed, never put
    back in the cache.  The test takes the connection that smtp(8) cached
    out of scache(8) (harness/scacheclient.py speaks scache's protocol) and
    puts it back with properties cut in half; the next delivery must log
    "bad cached endp properties", and the connection must be gone from the
    cache and closed at the receiver, well before its 120 s cache time.
    smtp(8) runs under valgrind memcheck: the decision to close must not
    depend on an uninitialised value (before the fix, policy_mismatch was
    not set on that path; its stack garbage happened to be zero here, so
    only memcheck shows the bug).

To show what a test does without the fix, run it with SAVEBACK_SMTP set to
another smtp(8) program (for example one saved from an earlier build): the
sender then runs that program instead of the installed one.
"""

import os
import re
import shutil
import time

import pytest

from harness.scacheclient import ScacheClient, label_from_log
from harness.world import wait_for

SMTP = os.environ.get("SAVEBACK_SMTP")
VALGRIND = shutil.which("valgrind")


def smtp_wrapper(s, verbose=False, memcheck_dir=None):
    """Run the sender's smtp(8) through a wrapper: SAVEBACK_SMTP instead of
    the installed program, -v, valgrind memcheck, as asked."""
    prog = SMTP or '"$REAL"'
    pre = ""
    if memcheck_dir:
        os.makedirs(memcheck_dir)
        os.chmod(memcheck_dir, 0o1777)
        pre = ("%s --tool=memcheck --error-exitcode=0 --log-file=%s/smtp.%%p.log "
               % (VALGRIND, memcheck_dir))
    s.wrap_daemons({"smtp": "exec %s%s %s\"$@\"" % (pre, prog, "-v " if verbose else "")})


def connection_of(r, msgid):
    """(smtpd pid, index of its 'connect from' record) of the receiver's
    connection that accepted a message."""
    recs = r.log_records()
    qid = None
    for ident, pid, text in recs:
        m = re.match(r"([0-9A-F]+): message-id=(\S+)", text)
        if m and m.group(2) == msgid:
            qid = m.group(1)
    for n, (ident, pid, text) in enumerate(recs):
        if qid and text.startswith(qid + ": client="):
            start = max(i for i in range(n) if recs[i][1] == pid
                        and recs[i][2].startswith("connect from "))
            return pid, start
    return None


def disconnected(r, conn):
    pid, start = conn
    return any(p == pid and t.startswith("disconnect from ")
               for i, p, t in r.log_records()[start:])


def drain(s, label):
    """Take every connection cached under label out of the cache; returns
    their properties (the connections are closed)."""
    props = []
    with ScacheClient(s.queue) as c:
        while True:
            found = c.find_endp(label)
            if found is None:
                return props
            os.close(found[0])
            props.append(found[1])


def test_unparsable_cached_entry_is_closed_not_saved_back(world):
    addr = "127.0.0.41"
    r = world.postfix_receiver("r1", [addr])
    s = world.sender({"a.test": "[%s]:25" % addr}, reuse=True, cache_time=120,
                     smtp_tls_connection_cache_time_limit="120s")
    assert VALGRIND, "valgrind is not installed"
    memcheck = os.path.join(s.base, "valgrind")
    smtp_wrapper(s, verbose=True, memcheck_dir=memcheck)
    world.start()

    [first] = world.send(s, "user@a.test", tag="first")
    s.wait_log(r"^scache_clnt_save_endp: endp=", timeout=120)
    [label] = set(label_from_log(m) for m in re.findall(
        r"^smtp_reuse_addr: endp_label='(.*)'$", "\n".join(s.grep(r"^smtp_reuse_addr: "))))
    conn = connection_of(r, first)

    # Put the cached connection back with properties that this build cannot
    # parse.
    with ScacheClient(s.queue) as c:
        fd, prop = c.find_endp(label)
        assert c.save_endp(120, label, prop[:len(prop) // 2], fd)

    [second] = world.send(s, "user@a.test", tag="second")
    s.wait_log(r"to=<user@a\.test>.*status=sent", count=2, timeout=120)
    assert s.grep(r"^warning: smtp_session_activate: bad cached endp properties$")
    assert second in r.message_ids()
    # Gone from the cache (the second delivery's own connection is there).
    left = drain(s, label)
    assert prop[:len(prop) // 2] not in left, "the unparsable entry was saved back"
    wait_for(lambda: disconnected(r, conn), 60, "the unparsable connection to close")
    assert r.counts().plaintext_messages == 0
    # What smtp(8) decided about that connection must not depend on
    # uninitialised memory (whose value happens to be zero, or not).
    s.stop()
    logs = [os.path.join(memcheck, p) for p in os.listdir(memcheck)]
    assert logs
    for path in logs:
        wait_for(lambda: "ERROR SUMMARY" in open(path, errors="replace").read(), 60,
                 "valgrind's summary in " + path)
        text = open(path, errors="replace").read()
        assert "uninitialised" not in text, text[-4000:]
