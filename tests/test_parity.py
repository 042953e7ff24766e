"""Opportunistic TLS parity: reuse on is never worse than reuse off.

For each kind of receiver, the same messages are sent with
smtp_tls_connection_reuse = no and = yes (two senders, one after the
other, the patched build), and the outcomes are compared, counted at the
receiver: delivered, delivered in plaintext, still deferred, bounced, and
the warnings that the sender logs.  Any difference fails.

At level "may" (upstream's default since 3.11) a receiver may offer TLS 1.3
or TLS 1.2 only, offer no STARTTLS, answer STARTTLS with 454, accept
STARTTLS and then fail the handshake (a reuse-off client retries such a
delivery in plaintext at "may"), close during the handshake, or present an
untrusted or expired certificate.  At "encrypt", mail is never sent in
plaintext.  The STARTTLS and handshake faults are made by a relay in front
of a real Postfix receiver (harness/faultproxy.py).  Messages are spaced,
so that reuse on also meets cached connections."""

import re
import time

import pytest

from harness.faultproxy import FaultProxy
from harness.pki import TestCA

N = 2
# Deferrals after which a message counts as deferred: at "may" the
# plaintext retry may come only at the third attempt; at "encrypt" one
# retry shows that it stays deferred.
DEFERRALS = {"may": 3, "encrypt": 2}
SPACING = 2
FAST = {
    "minimal_backoff_time": "2s", "maximal_backoff_time": "4s",
    "queue_run_delay": "2s", "smtp_starttls_timeout": "10s",
}

# (id, receiver settings, relay faults, receiver certificate)
RECEIVERS = [
    ("tls13", {}, {}, None),
    ("tls12-only", {"smtpd_tls_protocols": "<=TLSv1.2"}, {}, None),
    ("no-starttls", {"smtpd_tls_security_level": "none"}, {}, None),
    ("starttls-454", {}, {"starttls_reply": "454 4.7.0 TLS not available due "
                                            "to local problem"}, None),
    ("handshake-fails", {}, {"break_handshake": "garbage"}, None),
    ("closes-in-handshake", {}, {"break_handshake": "close"}, None),
    ("untrusted-cert", {}, {}, "untrusted"),
    ("expired-cert", {}, {}, "expired"),
]
CASES = ([("may",) + r for r in RECEIVERS]
         + [("encrypt",) + r for r in RECEIVERS
            if r[0] in ("tls13", "no-starttls", "starttls-454",
                        "handshake-fails", "closes-in-handshake")]
         # Not a receiver but the sender: a master.cf without tlsproxy.
         + [(level, "no-tlsproxy-service", {}, {}, None)
            for level in ("may", "encrypt")])

# What reuse on logs, and must log, in addition to reuse off's warnings.
EXTRA_WARNINGS = {
    "no-tlsproxy-service": [
        r"^warning: connect to private/tlsproxy service: No such file",
        r"^warning: \S+: TLS connection reuse is unavailable: the tlsproxy "
        r"service could not take the connection"],
}


def receiver_cert(world, kind):
    if kind == "untrusted":
        return TestCA(world.dir + "/other-ca", name="Other CA").issue(
            "mx-r1", ["mx-r1.test"])
    if kind == "expired":
        return world.ca.issue("mx-r1-expired", ["mx-r1.test"], expired=True)
    return world.cert("mx-r1")


def warnings(s):
    """The sender's warnings, without process names, ids and addresses."""
    out = set()
    for ident, _, text in s.log_records():
        if not text.startswith("warning:"):
            continue
        text = re.sub(r"\b[0-9A-F]{10,}\b", "QID", text)
        text = re.sub(r"\d+", "N", text)
        out.add(text)
    return sorted(out)


def settled(s, deferrals_needed):
    """Each of the N messages is delivered or bounced, or has been deferred
    deferrals_needed times: the retry that a client makes in plaintext at
    "may", after a failed handshake, comes at the next attempt or a later
    one, depending on timing (with reuse off as with reuse on)."""
    final, deferrals = set(), {}
    for t in s.grep(r"status=(sent|bounced|deferred)", ident="smtp"):
        qid = t.split(":", 1)[0]
        if "status=deferred" in t:
            deferrals[qid] = deferrals.get(qid, 0) + 1
        else:
            final.add(qid)
    return len(final | {q for q, k in deferrals.items() if k >= deferrals_needed}) >= N


def outcome(s, r, ids):
    """What the receiver and the sender's queue and log say."""
    got = [i for i in r.accepted_ids() if i in ids]
    assert len(got) == len(set(got)), "duplicates: %s" % got
    c = r.counts()
    # Each message's last status in the sender's log (the queue itself is
    # a moving target while retries run: showq may list a file that qmgr
    # moves between queues twice, or not at all).
    last = {}
    for t in s.grep(r"status=(sent|bounced|deferred)", ident="smtp"):
        last[t.split(":", 1)[0]] = re.search(r"status=(\w+)", t).group(1)
    return {
        "delivered": c.messages,
        "plaintext": c.plaintext_messages,
        "deferred": sum(v == "deferred" for v in last.values()),
        "bounced": sum(v == "bounced" for v in last.values()),
        "warnings": warnings(s),
    }


@pytest.mark.parametrize("level, name, server, faults, cert", CASES,
                         ids=["%s-%s" % (c[0], c[1]) for c in CASES])
def test_reuse_on_same_outcome_as_off(world, level, name, server, faults, cert):
    """Reuse off and reuse on side by side, each with its own relay and
    receiver (same settings, same certificate), messages interleaved."""
    crt = receiver_cert(world, cert)
    peers = {}
    for mode, proxy, recv in (("off", "127.0.0.40", "127.0.0.41"),
                              ("on", "127.0.0.42", "127.0.0.43")):
        r = world.postfix_receiver("r-" + mode, [recv], cert=crt, **server)
        p = FaultProxy(proxy, 25, recv)
        world.things.append(p)
        p.set(**faults)
        s = world.sender({"d1.test": "[%s]:25" % proxy}, name=mode,
                         reuse=(mode == "on"), level=level,
                         tlsproxy=(name != "no-tlsproxy-service"), **FAST)
        peers[mode] = (s, r, [])
    world.start()
    for i in range(N):
        if i:
            time.sleep(SPACING)
        for mode, (s, r, ids) in peers.items():
            ids += world.send(s, "user@d1.test", tag=mode)
    deadline = time.time() + 120
    while not all(settled(s, DEFERRALS[level]) for s, _, _ in peers.values()):
        assert time.time() < deadline, "no outcome for %d messages\n%s%s" % (
            N, peers["off"][0].log_tail(20), peers["on"][0].log_tail(20))
        # A deferred queue file that qmgr finds still locked waits 60 s
        # unless flushed (see test_admin_defaults.wait_log_flushing).
        for s, _, _ in peers.values():
            s.flush()
        time.sleep(2)
    time.sleep(1)
    got = {mode: outcome(*peer) for mode, peer in peers.items()}
    print("%s %s: off %s\n%s %s: on  %s" % (level, name, got["off"], level, name,
                                            got["on"]))
    extra = EXTRA_WARNINGS.get(name, [])
    for rx in extra:
        found = [w for w in got["on"]["warnings"] if re.search(rx, w)]
        assert found, "reuse on did not log %r" % rx
        got["on"]["warnings"] = [w for w in got["on"]["warnings"] if w not in found]
    assert got["on"] == got["off"]
    if level == "encrypt":
        assert got["on"]["plaintext"] == 0
