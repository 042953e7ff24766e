"""In-place upgrade with a running master: SMTP client, tlsproxy and scache
processes of two Postfix builds side by side (issue 13, item 4).

A package upgrade replaces the programs under a running master; until
"postfix reload", processes of the old build keep running next to new ones
that the master starts from the new programs, and scache holds connections
that old SMTP client processes saved.  The TLS context that tlsproxy returns
(and that smtp saves with a cached connection) differs between builds.  In
every mix: each message is delivered exactly once, none in plaintext, and a
protocol mismatch is logged as such, never as a TLS handshake failure.

The instance gets its own daemon_directory of symlinks (as in
Postfix.wrap_daemons()); "installing" a build replaces the symlinks one by
one (rename, atomic per program).  The smtp service runs with max_use=1, so
every delivery after a replacement is made by a process of the program that
is installed at that moment, as old processes end by max_idle/max_use in a
real upgrade.  Two orders:

  all-at-once      every program replaced while the old tlsproxy still holds
                   cached connections: new smtp meets the old tlsproxy and
                   connections cached by old smtp processes ("internal
                   protocol mismatch": the new smtp delivers over a new
                   connection with its own TLS, without a deferral);
  tlsproxy-first   tlsproxy replaced first and the old tlsproxy process ends:
                   old smtp meets the new tlsproxy (which must answer in the
                   format the old client reads); then the rest is replaced,
                   and new smtp meets connections cached by old smtp.

Old builds: stock Postfix of the same base (build/<base>/inst/stock: 3.10.13
for the stable series, 3.12-20260821 for the development series, whose own
TLS context already differs from 3.10's), and, when built, an earlier
build of this series without a context version (build/<base>/inst/prev, e.g.
"scripts/build prev=<commit>").  UPGRADE_NEW=<flavour> upgrades to another
build than "patched" (to show that a build without the fix fails).
UPGRADE_PREV_SAME_CONTEXT=1 says that prev is a build of this series with
the new build's context version (for example the series one patch back):
then new smtp processes meet the old tlsproxy without a mismatch, and the
old scache (an scache from before the patch that saves the links to a
cached connection in one exchange answers only the first request of a
batch: the new smtp must fall back to one request at a time)."""

import os
import re
import signal
import time

import pytest

from harness.base import BASE
from harness.postfix import INST, installed
from harness.world import wait_for

NEW = os.environ.get("UPGRADE_NEW", "patched")
PREV_SAME_CONTEXT = os.environ.get("UPGRADE_PREV_SAME_CONTEXT") == "1"
OLD = ["stock", "prev"]
LEVELS = ["may", "encrypt", "secure"]
ORDERS = ["all-at-once", "tlsproxy-first"]
SPACING = 2


def install(pf, flavour, programs=None):
    """Point pf's daemon directory at flavour's programs (all, or those
    named), one atomic rename per program."""
    real = os.path.join(INST, flavour, "libexec", "postfix")
    d = os.path.join(pf.base, "libexec")
    os.makedirs(d, exist_ok=True)
    for f in sorted(os.listdir(real)):
        if programs is not None and f not in programs:
            continue
        tmp = os.path.join(d, ".%s.new" % f)
        os.symlink(os.path.join(real, f), tmp)
        os.rename(tmp, os.path.join(d, f))
    pf.main["daemon_directory"] = d


def exe_flavour(pid):
    """The build whose program a process runs: build/<base>/inst/<flavour>/..."""
    try:
        exe = os.readlink("/proc/%d/exe" % pid)
    except OSError:
        return None
    m = re.match(re.escape(os.path.realpath(INST)) + r"/([^/]+)/", exe)
    return m.group(1) if m else None


def with_max_use_one(pf):
    """The smtp service delivers once per process (see the module doc)."""
    orig = pf._master_cf

    def master_cf():
        return re.sub(r"^(smtp\s+unix\s.*\ssmtp)\s*$", r"\1 -o max_use=1",
                      orig(), flags=re.M)
    pf._master_cf = master_cf


@pytest.mark.stock
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("old", OLD)
def test_upgrade_in_place(world, old, level, order):
    if not installed(old):
        pytest.skip("build/%s/inst/%s is not built (BASE=%s scripts/build %s=<commit>)"
                    % (BASE, old, BASE, old))
    if not installed(NEW):
        pytest.fail("build/%s/inst/%s is not built" % (BASE, NEW))
    if old == "prev" and order == "tlsproxy-first" and not PREV_SAME_CONTEXT:
        pytest.skip("an smtp(8) of an earlier build of the series (no context "
                    "version) cannot read the context that a new tlsproxy(8) "
                    "sends to unversioned clients (the format of stock Postfix "
                    "of the same base); "
                    "documented: stop Postfix to upgrade from such a build")

    r = world.postfix_receiver("r1", ["127.0.0.10"], store=True)
    extra = {}
    if level == "secure":
        extra["smtp_tls_secure_cert_match"] = "mx-r1.test"
    s = world.sender({"d1.test": "[127.0.0.10]:25"}, reuse=True, level=level,
                     flavour=old,
                     default_destination_concurrency_failed_cohort_limit=10,
                     **extra)
    with_max_use_one(s)
    install(s, old)
    world.start()

    # The old build delivers, and caches its connection.
    ids = world.send(s, "user@d1.test", n=3, spacing=SPACING)
    wait_for(lambda: len(r.accepted_ids()) >= 3, 60, "old build's deliveries")
    assert max(s.conn_uses() or [0]) >= 2, "the old build did not reuse"
    old_proxies = [p for p in s.children("tlsproxy") if exe_flavour(p) == old]
    assert old_proxies, "no tlsproxy process of the old build"

    if order == "tlsproxy-first":
        install(s, NEW, ["tlsproxy"])
        for pid in old_proxies:
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not [p for p in s.children("tlsproxy")
                              if exe_flavour(p) == old], 20,
                 "the old tlsproxy process to end")
        # Old smtp processes talk to the new tlsproxy.
        time.sleep(SPACING)
        ids += world.send(s, "user@d1.test", n=3, spacing=SPACING)
        wait_for(lambda: len(s.grep(r"status=(sent|deferred)")) >= 6, 60,
                 "deliveries of old smtp through the new tlsproxy")
        assert [p for p in s.children("tlsproxy") if exe_flavour(p) == NEW]
        s.wait_log(r"status=sent", count=6, timeout=30)

    # The rest of the new build is installed; deliveries continue.
    install(s, NEW)
    s.inst = os.path.join(INST, NEW)
    time.sleep(SPACING)
    ids += world.send(s, "user@d1.test", n=3, spacing=SPACING)
    wait_for(lambda: len(s.grep(r"status=(sent|deferred)")) >= len(ids), 60,
             "deliveries after the new programs were installed")
    if order == "all-at-once":
        # The old tlsproxy was still there for the new smtp processes.
        assert [p for p in s.children("tlsproxy") if exe_flavour(p) == old]

    # postfix reload: every process is of the new build; deferred mail goes.
    s.reload()
    time.sleep(1)
    s.flush()
    wait_for(lambda: len(r.accepted_ids()) >= len(ids), 90,
             "every message after postfix reload")
    time.sleep(3)                                       # room for duplicates
    wait_for(lambda: s.queued() == [], 30, "an empty sender queue")

    # Every message exactly once, none in plaintext.
    assert sorted(r.accepted_ids()) == sorted(ids)
    msgs = r.messages()
    assert len(msgs) == len(ids)
    for m in msgs:
        received = m.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        assert b"(using TLS" in received, "a message arrived in plaintext:\n%s" % received
    assert r.counts().plaintext_messages == 0

    # A mismatch is named as such, with what to do; never a handshake failure.
    assert not s.grep(r"handshake failure"), s.grep(r"handshake failure")
    # Connections cached by the other build are never even found (the
    # lookup keys carry a version): nothing to parse, nothing to reject.
    assert not s.grep(r"bad cached endp properties")
    mismatch = s.grep(r"internal protocol mismatch")
    if old == "prev" and PREV_SAME_CONTEXT:
        assert not mismatch
        assert not s.grep(r"problem talking to service|disabling connection caching")
    elif order == "all-at-once":
        assert mismatch, ("new smtp met the old tlsproxy, but logged no mismatch "
                          "(a prev with this build's context version needs "
                          "UPGRADE_PREV_SAME_CONTEXT=1)")
        warnings = s.grep(r"^warning: internal protocol mismatch")
        assert warnings and all('run "postfix reload"' in t for t in warnings)
        # Never worse than without reuse: a new connection with the
        # smtp process's own TLS, not a deferral.
        assert s.grep(r"delivering over a new connection with TLS in this "
                      r"process, without connection reuse$")
        assert not s.grep(r"status=deferred.*internal protocol mismatch")
    else:
        assert not mismatch
