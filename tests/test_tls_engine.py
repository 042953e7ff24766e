"""smtp(8) creates its own TLS engine only when a delivery needs it.

With smtp_tls_connection_reuse = yes, tlsproxy(8) does every TLS handshake,
except for a destination whose policy says "connection_reuse = no".  The
patched smtp(8) then postpones creating its in-process TLS engine (an
SSL_CTX, PRNG seeding, the tlsmgr(8) cache policy) to the first delivery
that does TLS itself, unless the engine needs a certificate, key, CAfile or
CApath (files and directories, and with tls_append_default_CA = yes OpenSSL's
default CA file, that must be read before chroot and before dropping
privileges).  Every path to the in-process engine (after STARTTLS, and in
SMTPS wrapper mode) finds an engine or defers the delivery: never a crash,
never plaintext.

The sender logs at smtp_tls_loglevel = 2, where the TLS library says
"initializing the client-side TLS engine" when it creates an engine.  The
receiver counts handshakes and plaintext messages.
"""

import os
import re
import shutil
import subprocess

import pytest

from harness.pki import TestCA
from harness.world import wait_for

SPACING = 3
ENGINE = r"^initializing the client-side TLS engine$"
LIBRARY = r"^initializing the client-side TLS library$"


def pids(sender, pattern):
    """PIDs of the smtp processes that logged pattern, once per line."""
    rx = re.compile(pattern)
    return [pid for (ident, pid, text) in sender.log_records()
            if ident.endswith("/smtp") and rx.search(text)]


def delivered_by(sender, domain):
    """PIDs of the smtp processes that delivered mail for domain."""
    return set(pids(sender, r"to=<[^>]*@%s>.*status=sent" % re.escape(domain)))


@pytest.mark.parametrize("level", ["encrypt", "may"])
def test_engine_waits_for_a_delivery_without_reuse(world, level):
    r = world.postfix_receiver("r1", ["127.0.0.10", "127.0.0.11"])
    s = world.sender({"proxied.test": "[127.0.0.10]:25", "local.test": "[127.0.0.11]:25"},
                     reuse=True, level=level, smtp_tls_CAfile="", smtp_tls_loglevel="2")
    s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {
        "[127.0.0.11]:25": "%s connection_reuse=no" % level})
    world.start()

    world.send(s, "user@proxied.test", n=2, spacing=SPACING)
    wait_for(lambda: len(s.grep(r"status=sent")) >= 2, 60, "2 proxied deliveries")
    assert pids(s, LIBRARY), "smtp set up the TLS library before the jail"
    assert pids(s, ENGINE) == [], "no engine in smtp while tlsproxy does TLS"
    c = r.counts()
    assert (c.messages, c.handshakes, c.plaintext_messages) == (2, 1, 0), c
    assert len(s.grep(r"TLS connection reused to 127\.0\.0\.10")) == 1

    # A policy without reuse: smtp creates its engine now, once, and the
    # message goes over TLS (never plaintext, even at level "may").
    world.send(s, "user@local.test", n=2, spacing=SPACING)
    wait_for(lambda: len(s.grep(r"status=sent")) >= 4, 60, "2 local-TLS deliveries")
    engines = pids(s, ENGINE)
    assert engines, "an engine for the connection_reuse=no policy"
    assert len(engines) == len(set(engines)), "at most one engine per process"
    assert set(engines) <= delivered_by(s, "local.test")
    c = r.counts()
    assert (c.messages, c.handshakes, c.plaintext_messages) == (4, 3, 0), c
    assert len(s.grep(r"TLS connection established to 127\.0\.0\.11", ident="smtp")) == 2

    # A process with its own engine still hands reusable TLS to tlsproxy.
    world.send(s, "user@proxied.test", n=1)
    wait_for(lambda: len(s.grep(r"status=sent")) >= 5, 60, "a proxied delivery")
    c = r.counts()
    assert (c.messages, c.handshakes, c.plaintext_messages) == (5, 3, 0), c
    assert len(s.grep(r"TLS connection reused to 127\.0\.0\.10")) == 2


def test_engine_with_files_is_created_before_the_jail(world):
    """A CAfile (or client certificate) must be opened pre-jail: the engine
    is created at start-up, as upstream does, although tlsproxy does TLS."""
    r = world.postfix_receiver("r1", ["127.0.0.10"])
    s = world.sender({"proxied.test": "[127.0.0.10]:25"}, reuse=True,
                     smtp_tls_loglevel="2")
    assert s.main["smtp_tls_CAfile"]
    world.start()
    world.send(s, "user@proxied.test", n=1)
    wait_for(lambda: len(s.grep(r"status=sent")) >= 1, 60, "1 delivery")
    assert pids(s, ENGINE), "engine created at start-up"
    assert pids(s, LIBRARY) == []
    c = r.counts()
    assert (c.messages, c.handshakes, c.plaintext_messages) == (1, 1, 0), c


def test_stock_creates_the_engine_although_tlsproxy_does_tls(world):
    """Control: upstream creates the engine in every smtp process."""
    r = world.postfix_receiver("r1", ["127.0.0.10"])
    s = world.sender({"proxied.test": "[127.0.0.10]:25"}, reuse=True, flavour="stock",
                     smtp_tls_CAfile="", smtp_tls_loglevel="2")
    world.start()
    world.send(s, "user@proxied.test", n=1)
    wait_for(lambda: len(s.grep(r"status=sent")) >= 1, 60, "1 delivery")
    assert pids(s, ENGINE), "stock creates an engine"
    c = r.counts()
    assert (c.messages, c.handshakes) == (1, 1), c


# -- Every path to the in-process engine, and engines that need files ------
#
# A delivery that does TLS itself (policy "connection_reuse = no") reaches
# the in-process engine through smtp_start_tls(), after STARTTLS or, in SMTPS
# wrapper mode, right after connecting.  The engine must exist there, or the
# delivery is deferred: never a NULL engine, never plaintext.


def crashed(sender):
    return sender.grep(r"/smtp pid \d+ killed by signal", ident="master")


def wait_sent_or_crash(sender, n, what):
    wait_for(lambda: len(sender.grep(r"status=sent")) >= n or crashed(sender),
             90, what)
    assert not crashed(sender), crashed(sender)


@pytest.mark.parametrize("flavour", ["patched", "stock"])
def test_wrappermode_relay(world, flavour):
    """Issue 13 item 1: an SMTPS (wrapper mode) relay with a policy that says
    connection_reuse = no, no CAfile: smtp creates its engine and delivers
    over TLS (the series crashed with SIGSEGV: a NULL engine); a wrapper-mode
    destination with reuse still goes through tlsproxy and reuses."""
    r = world.postfix_receiver("r1", ["127.0.0.10", "127.0.0.11"], port=465,
                               smtpd_tls_wrappermode="yes")
    s = world.sender({"w.test": "[127.0.0.10]:465", "p.test": "[127.0.0.11]:465"},
                     reuse=True, flavour=flavour, smtp_tls_CAfile="",
                     smtp_tls_loglevel="2")
    s.add_service("relay465 unix - - n - - smtp -o smtp_tls_wrappermode=yes")
    s.main["transport_maps"] = s.write_table("transport", {
        "w.test": "relay465:[127.0.0.10]:465",
        "p.test": "relay465:[127.0.0.11]:465"})
    s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {
        "[127.0.0.10]:465": "encrypt connection_reuse=no"})
    world.start()

    world.send(s, "user@w.test", n=2, spacing=SPACING)
    wait_sent_or_crash(s, 2, "2 wrapper-mode deliveries without reuse")
    assert len(s.grep(r"TLS connection established to 127\.0\.0\.10", ident="smtp")) == 2
    c = r.counts("127.0.0.10")
    assert (c.messages, c.handshakes, c.plaintext_messages) == (2, 2, 0), c

    world.send(s, "user@p.test", n=2, spacing=SPACING)
    wait_sent_or_crash(s, 4, "2 wrapper-mode deliveries with reuse")
    c = r.counts("127.0.0.11")
    if flavour == "patched":
        assert (c.messages, c.handshakes, c.plaintext_messages) == (2, 1, 0), c
        assert len(s.grep(r"TLS connection reused to 127\.0\.0\.11")) == 1
    else:
        assert (c.messages, c.plaintext_messages) == (2, 0), c
    assert s.queued() == []


# -- Engines that need files, under chroot ---------------------------------
#
# The test instances run every service with chroot = n; these tests add an
# smtp service "smtpjail" with chroot = y, whose jail is the sender's queue
# directory (as Debian runs smtp, tlsproxy and scache).  CApath directories
# are c_rehash'ed (openssl rehash) and copied into the jail at the same path,
# as Debian's configure-instance does.  The system CA store is not touched:
# OpenSSL's default CA file is pointed at a test CA with SSL_CERT_FILE, which
# Postfix passes to its daemons only through import_environment.

def capath_dir(world, s, name, certs):
    """A rehashed CApath directory holding certs, also inside s's jail."""
    path = os.path.join(world.dir, name)
    os.makedirs(path)
    for i, cert in enumerate(certs):
        shutil.copy(cert, os.path.join(path, "ca%d.pem" % i))
    subprocess.run(["openssl", "rehash", path], check=True, capture_output=True)
    shutil.copytree(path, s.queue + path, symlinks=True)
    return path


def jailed_sender(world, flavour, policy, **main):
    """A sender whose smtpjail service (chroot = y) delivers v.test to
    [127.0.0.10]:25 under policy, without CAfile, with reuse on in main.cf."""
    s = world.sender({"v.test": "[127.0.0.10]:25"}, reuse=True, flavour=flavour,
                     smtp_tls_CAfile="", smtp_tls_loglevel="2", **main)
    s.add_service("smtpjail unix - - y - - smtp")
    s.main["transport_maps"] = s.write_table("transport", {
        "v.test": "smtpjail:[127.0.0.10]:25"})
    s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {
        "[127.0.0.10]:25": policy})
    return s


def wait_done(s, n=1):
    """Wait until n deliveries were sent, deferred or crashed."""
    wait_for(lambda: len(s.grep(r"status=(sent|deferred)")) >= n or crashed(s),
             90, "%d delivery attempts" % n)
    assert not crashed(s), crashed(s)


SECURE = "secure match=mx-r1.test connection_reuse=no"


@pytest.mark.parametrize("flavour, append", [
    ("patched", "yes"), ("stock", "yes"), ("patched", "no")])
def test_default_CAs_under_chroot(world, flavour, append):
    """Issue 13 item 7: tls_append_default_CA = yes with a CApath (it has no
    effect without CAfile or CApath) loads OpenSSL's default CA file when the
    engine is created.  Under chroot that works only before the jail: the
    series created the engine after it, and a connection_reuse = no delivery
    at level secure was deferred, "Server certificate not verified".  The
    test CA is only in the default CA file (SSL_CERT_FILE, outside the jail);
    the CApath holds another CA.  Control: with tls_append_default_CA = no
    the same delivery is deferred."""
    other = TestCA(os.path.join(world.dir, "other-ca"), name="Other CA")
    r = world.postfix_receiver("r1", ["127.0.0.10"])
    s = jailed_sender(world, flavour, SECURE, tls_append_default_CA=append)
    s.main["smtp_tls_CApath"] = capath_dir(world, s, "capath", [other.cert])
    s.main["import_environment"] = "%s SSL_CERT_FILE=%s" % (
        s.postconf("-dh", "import_environment").strip(), world.ca.cert)
    world.start()
    world.send(s, "user@v.test")
    wait_done(s)
    if append == "no":
        c = r.counts()
        assert s.grep(r"status=deferred .*Server certificate not verified"), s.log_tail()
        assert (c.messages, c.plaintext_messages) == (0, 0), c
        return
    assert s.grep(r"status=sent"), s.log_tail()
    assert len(s.grep(r"Verified TLS connection established to 127\.0\.0\.10",
                      ident="smtp")) == 1
    c = r.wait_messages(1)
    assert (c.messages, c.handshakes, c.plaintext_messages) == (1, 1, 0), c
    if flavour == "patched":
        assert pids(s, LIBRARY) == [], "engine created before the jail"


def test_capath_engine_is_created_before_the_jail(world):
    """A CApath is a directory that the engine needs: with one, smtp creates
    its engine at start-up, before the jail (the series postponed it), and a
    chrooted connection_reuse = no delivery at level secure verifies the
    server with the CApath copy in the jail."""
    r = world.postfix_receiver("r1", ["127.0.0.10"])
    s = jailed_sender(world, "patched", SECURE)
    s.main["smtp_tls_CApath"] = capath_dir(world, s, "capath", [world.ca.cert])
    world.start()
    world.send(s, "user@v.test")
    wait_done(s)
    assert s.grep(r"status=sent"), s.log_tail()
    assert len(s.grep(r"Verified TLS connection established to 127\.0\.0\.10",
                      ident="smtp")) == 1
    c = r.wait_messages(1)
    assert (c.messages, c.handshakes, c.plaintext_messages) == (1, 1, 0), c
    assert pids(s, LIBRARY) == [], "engine created before the jail"
    assert pids(s, ENGINE), "engine created"


@pytest.mark.parametrize("flavour", ["patched", "stock"])
@pytest.mark.parametrize("mode", ["starttls", "wrapper"])
def test_engine_that_cannot_be_created_defers(world, flavour, mode):
    """When smtp has no engine for a connection_reuse = no delivery (here
    tlsmgr(8), which seeds it, is missing from master.cf: the patched smtp
    fails to create it on first use, stock at start-up), the delivery is
    deferred, even at level "may" and in SMTPS wrapper mode: never
    plaintext, never a crash.  The series sent it in plaintext after
    STARTTLS (as stock does) and crashed in wrapper mode (as stock does)."""
    port = 465 if mode == "wrapper" else 25
    extra = {"smtpd_tls_wrappermode": "yes"} if mode == "wrapper" else {}
    r = world.postfix_receiver("r1", ["127.0.0.10"], port=port, **extra)
    level = "encrypt" if mode == "wrapper" else "may"
    s = world.sender({"m.test": "[127.0.0.10]:%d" % port}, reuse=True, level=level,
                     flavour=flavour, smtp_tls_CAfile="")
    s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {
        "[127.0.0.10]:%d" % port: "%s connection_reuse=no" % level})
    if mode == "wrapper":
        s.add_service("relay465 unix - - n - - smtp -o smtp_tls_wrappermode=yes")
        s.main["transport_maps"] = s.write_table("transport", {
            "m.test": "relay465:[127.0.0.10]:465"})
    master_cf = s._master_cf
    s._master_cf = lambda: re.sub(r"^tlsmgr\s", "#\\g<0>", master_cf(), flags=re.M)
    world.start()
    world.send(s, "user@m.test")
    wait_for(lambda: s.grep(r"status=(sent|deferred)") or crashed(s), 90, "a delivery attempt")
    c = r.counts()
    if flavour == "stock":
        if mode == "wrapper":
            assert crashed(s), s.log_tail()
        else:
            assert s.grep(r"status=sent"), s.log_tail()
            assert (c.messages, c.plaintext_messages) == (1, 1), c
        return
    assert not crashed(s), crashed(s)
    assert s.grep(r"status=deferred .*Cannot start TLS: our TLS engine is unavailable"), \
        s.log_tail()
    assert s.grep(r"warning: cannot start TLS with 127\.0\.0\.10\S*: no client-side TLS engine")
    assert (c.messages, c.plaintext_messages) == (0, 0), c
    assert len(s.queued()) == 1
