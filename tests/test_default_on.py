"""TLS connection reuse on by default at compatibility level 3.12.

A new installation of the development series (its own main.cf, which says
compatibility_level = 3.12, and its own master.cf, with no TLS setting
other than upstream's defaults: level "may", no CAfile) reuses TLS
connections for spaced mail; stock 3.12 with the same files does not.  A
site upgraded at level 3.11 keeps the old default, says so once per smtp(8)
process, and after "postconf compatibility_level=3.12" and "postfix
reload" reuses with nothing else to do; its master.cf, as "postfix
upgrade-configuration" leaves it, may have the tlsproxy line commented out:
then smtp(8) does TLS itself with one warning.  Counted at the receiver,
messages 3 s apart (a burst would be reused by qmgr's on-demand caching
even without the new default)."""

import subprocess
import time

import pytest

from harness.base import POSTFIX_VERSION
from test_admin_defaults import TLSPROXY_MISSING
from harness.world import wait_for

pytestmark = pytest.mark.skipif(
    POSTFIX_VERSION.startswith("3.10"),
    reason="compatibility level 3.12 is the development series' (the %s "
    "series keeps reuse opt-in)" % POSTFIX_VERSION)

ADDR = "127.0.0.10"
SPACING = 3
COMPAT_LINE = (r"^using backwards-compatible default setting "
               r"smtp_tls_connection_reuse=no$")
FALLBACK = (r"^warning: \S+: TLS connection reuse is unavailable: the tlsproxy "
            r"service could not take the connection")


def installed_sender(world, flavour, tlsproxy=None, **main):
    """A sender with the build's own main.cf settings for TLS (none) and
    connection caching (none), its own master.cf (tlsproxy=None), and
    only the test harness's routing and logging.  "patched" means the
    build under test (PFX_FLAVOUR, to show that a test fails without a
    change)."""
    if flavour == "patched":
        flavour = world.flavour
    s = world.sender({"d1.test": "[%s]:25" % ADDR}, flavour=flavour,
                     tlsproxy=tlsproxy, tuned=False, **main)
    for k in ("smtp_tls_connection_reuse", "smtp_tls_security_level",
              "smtp_tls_CAfile", "smtp_tls_loglevel"):
        s.main.pop(k)
    return s


def smtp_pids(s):
    return {pid for ident, pid, _ in s.log_records() if ident.endswith("/smtp")}


@pytest.mark.parametrize("flavour", ["patched", "stock"])
def test_new_install_reuses_spaced_mail(world, flavour):
    n = 20 if flavour == "patched" else 5
    r = world.postfix_receiver("r1", [ADDR])
    s = installed_sender(world, flavour)
    assert s.main["compatibility_level"] == "3.12"
    world.start()
    assert s.postconf("-xh", "smtp_tls_connection_reuse").strip() == \
        ("yes" if flavour == "patched" else "no")
    ids = world.send(s, "user@d1.test", n=n, spacing=SPACING)
    c = r.wait_messages(n, timeout=60)
    assert c.messages == n and c.plaintext_messages == 0, c
    wait_for(lambda: len(r.message_ids()) >= n, 30, "their Message-IDs logged")
    assert sorted(r.message_ids()) == sorted(ids)
    assert c.handshakes == (1 if flavour == "patched" else n), c
    # A healthy system: no warning of reuse's own, and no compatibility
    # reminder at the current level.
    assert not s.grep(r"warning:", ident="smtp"), s.log_tail()
    assert not s.grep(r"warning:", ident="tlsproxy"), s.log_tail()
    assert not s.grep(COMPAT_LINE)


@pytest.mark.parametrize("master_cf", ["tlsproxy", "no-tlsproxy"])
def test_upgraded_site_at_3_11(world, master_cf):
    n = 4
    r = world.postfix_receiver("r1", [ADDR])
    s = installed_sender(world, "patched", tlsproxy=(master_cf == "tlsproxy"),
                         compatibility_level="3.11")
    world.start()
    assert s.postconf("-xh", "smtp_tls_connection_reuse").strip() == "no"
    first = world.send(s, "user@d1.test", n=n, spacing=SPACING)
    c = r.wait_messages(n, timeout=60)
    assert (c.messages, c.handshakes, c.plaintext_messages) == (n, n, 0), c
    wait_for(lambda: len(s.grep(r"status=sent")) >= n, 30, "%d deliveries" % n)
    # The reminder, once per smtp(8) process that did TLS.
    reminded = s.grep(COMPAT_LINE, ident="smtp")
    assert 1 <= len(reminded) <= len(smtp_pids(s)), (reminded, smtp_pids(s))

    # What the administrator is told to do, and nothing else.
    s.postconf("compatibility_level=3.12")
    s.main["compatibility_level"] = "3.12"
    out = subprocess.run([s.cmd("postfix"), "-c", s.conf, "reload"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    time.sleep(1)
    more = world.send(s, "user@d1.test", n=n, spacing=SPACING, tag="after")
    c2 = r.wait_messages(2 * n, timeout=60)
    assert c2.messages == 2 * n and c2.plaintext_messages == 0, c2
    wait_for(lambda: len(r.message_ids()) >= 2 * n, 30, "their Message-IDs logged")
    assert sorted(r.message_ids()) == sorted(first + more)
    assert not s.grep(r"status=deferred")
    assert len(s.grep(COMPAT_LINE, ident="smtp")) == len(reminded)
    if master_cf == "tlsproxy":
        assert c2.handshakes == n + 1, c2
        assert not s.grep(FALLBACK)
    else:
        # In-process TLS, as before the change, and one warning per smtp
        # process that names the missing master.cf entry.
        assert c2.handshakes == 2 * n, c2
        warned = s.grep(FALLBACK)
        assert 1 <= len(warned) <= len(smtp_pids(s)), warned


@pytest.mark.parametrize("level", ["3.11", "3.12"])
def test_postfix_check_evaluates_the_default(world, level):
    """master.cf without tlsproxy and no smtp_tls_connection_reuse setting:
    "postfix check" warns at level 3.12, where the default is yes."""
    s = installed_sender(world, "patched", tlsproxy=False,
                         compatibility_level=level)
    s.prepare()
    text = s.check_output()
    assert (TLSPROXY_MISSING in text) == (level == "3.12"), text
