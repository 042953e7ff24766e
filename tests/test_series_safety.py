"""Every prefix of the series is at least as safe as stock: the core pairs of
the adversarial policy matrix (test_policy_keys.py) with Postfix's DEFAULT
connection cache settings and only smtp_tls_connection_reuse = yes.

A "weak" message is delivered first; 3 s later, while its connection may
still be cached, a "strict" message follows for the same receiver address
under a stricter TLS policy that this receiver cannot satisfy.  The strict
message must be deferred: if it arrives, it rode the weak connection.
Stock 3.10.13 defers it with these settings (it caches connections only in
a burst, for 2 s).

`make check` runs this on the whole series (and stock); `make check-series`
runs it on every prefix of the series, built and installed as the flavour
named in $SERIES_FLAVOURS (scripts/check-series).  A series where TLS
connections are kept across time before the cache key identifies the
complete policy fails here: upstream's key separates connections by TLS
level only, so "encrypt protocols=>=TLSv1.3" rides a TLS 1.2 connection
that was made for plain "encrypt".
"""

import os
import time

import pytest

from harness.world import wait_for

# SERIES_SAFETY_ADDR lets two check-series runs (one per base) run at once.
ADDR = os.environ.get("SERIES_SAFETY_ADDR", "127.0.0.14")
WEAK = "[%s]" % ADDR
STRICT = "[%s]:25" % ADDR

# The receiver offers TLS 1.2 only, with AES256 suites only.
NARROW_SERVER = {"smtpd_tls_protocols": "<=TLSv1.2",
                 "smtpd_tls_exclude_ciphers": "AES128, CHACHA20, ARIA, CAMELLIA"}

# (id, weak policy, strict policy that this receiver cannot satisfy)
CORE_PAIRS = [
    ("protocols", "encrypt", "encrypt protocols=>=TLSv1.3"),
    ("exclude", "encrypt", "encrypt exclude=AES256"),
    ("match-names", "secure match=mx-r1.test", "secure match=other.test"),
]

FLAVOURS = os.environ.get("SERIES_FLAVOURS", "patched stock").split()


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("pair", CORE_PAIRS, ids=[p[0] for p in CORE_PAIRS])
def test_strict_policy_with_default_cache_settings(world, pair, flavour):
    name, weak, strict = pair
    r = world.postfix_receiver("r1", [ADDR], cert=world.cert("mx-r1"),
                               **NARROW_SERVER)
    s = world.sender({"weak.test": WEAK, "strict.test": STRICT}, reuse=True,
                     flavour=flavour, tuned=False,
                     default_destination_concurrency_failed_cohort_limit=10)
    s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {
        WEAK: weak, STRICT: strict})
    world.start()

    [weak_id] = world.send(s, "user@weak.test", tag="weak")
    wait_for(lambda: weak_id in r.message_ids(), 30, "the weak message")
    s.wait_log(r"to=<user@weak\.test>.*status=sent", timeout=30)
    time.sleep(3)
    [strict_id] = world.send(s, "user@strict.test", tag="strict")
    s.wait_log(r"to=<user@strict\.test>.*status=(sent|deferred)", timeout=30)
    # The receiver logs a message after the sender's reply: give it time.
    time.sleep(1)

    assert strict_id not in r.message_ids(), \
        "%s: the strict message (%r) rode a connection made for %r\n%s" % (
            flavour, strict, weak, s.log_tail())
    assert s.grep(r"to=<user@strict\.test>.*status=deferred")
    assert r.counts().plaintext_messages == 0
