"""The Debian package of the series (make deb), installed as an administrator
installs it, under Debian's defaults.

Run by `make check-deb` (scripts/check-deb): as root, inside a private
network namespace, with build/deb/ built and Debian 12's own postfix package
downloaded to build/deb-old/.  The packages go into the real system paths
with dpkg -i; Debian's maintainer scripts write the configuration (debconf
"Internet Site": postinst, main.cf.debian + main.cf.tls, i.e.
smtp_tls_CAfile = /etc/ssl/certs/ca-certificates.crt, smtp_tls_security_level
= may, smtp_tls_session_cache_database = btree:${data_directory}/smtp_scache;
master.cf with smtp, tlsproxy and scache chrooted).  policy-rc.d keeps the
maintainer scripts from starting Postfix; the test starts the system
instance itself, in its own network namespace, with these additions only:
inet_interfaces = 127.0.0.1 (the receivers have other addresses),
maillog_file (a log to count from), transport_maps to the receivers, and
per test smtp_tls_connection_reuse = yes and the TLS policy under test.
The test CA is added the Debian way (/usr/local/share/ca-certificates,
update-ca-certificates).  Everything is purged at the end; the CA is removed
with update-ca-certificates --fresh; files the maintainer scripts create
outside the packages (/etc/aliases, /etc/mailname) are put back as found.

Counts are taken at the receivers (stock Postfix from build/inst/stock).
"""

import os
import subprocess
import time

import pytest

from harness import debsys
from harness.postfix import TOP, installed
from harness.world import World, wait_for

DEB_DIR = os.environ.get("DEB_DIR", os.path.join(TOP, "build", "deb"))
OLD_DIR = os.path.join(TOP, "build", "deb-old")

SPACING = 3

# Receivers: one per TLS level, one per policy pair, one for resumption,
# one for the upgrade test.
LEVELS = [("may", "127.0.0.10", None),
          ("encrypt", "127.0.0.11", "encrypt"),
          ("secure", "127.0.0.12", "secure match=mx-secure.test")]
# The adversarial policy matrix's core pairs (test_series_safety.py): the
# receiver offers TLS 1.2 only, AES256 suites only; a "weak" message first,
# then, 3 s later, a "strict" one for the same address under a policy this
# receiver cannot satisfy: it must be deferred, not ride the weak connection.
NARROW_SERVER = {"smtpd_tls_protocols": "<=TLSv1.2",
                 "smtpd_tls_exclude_ciphers": "AES128, CHACHA20, ARIA, CAMELLIA"}
PAIRS = [("protocols", "127.0.0.14", "encrypt", "encrypt protocols=>=TLSv1.3"),
         ("exclude", "127.0.0.15", "encrypt", "encrypt exclude=AES256"),
         ("match-names", "127.0.0.16", "secure match=mx-p16.test",
          "secure match=other.test")]
RESUME_ADDR = {"debian": "127.0.0.17", "none": "127.0.0.19"}
UPGRADE_ADDR = "127.0.0.18"


REPORT = os.path.join(TOP, "build", "deb-test-report.txt")


def report(line):
    """Counts for the packager's README, in build/deb-test-report.txt."""
    with open(REPORT, "a") as f:
        f.write(line + "\n")


def assert_check_clean(sp):
    """postfix check: exit 0, no warning or fatal message (Debian's
    configure-instance may say which files it copies into the chroot)."""
    rc, out = sp.check()
    assert rc == 0 and "warning" not in out and "fatal" not in out, out


def fmt(c):
    return "connections %d, handshakes %d, resumed %d, messages %d, plaintext %d" % (
        c.connections, c.handshakes, c.resumed, c.messages, c.plaintext_messages)


def preconditions():
    if os.environ.get("PFX_DEB_TESTS") != "1":
        pytest.skip("installs Debian packages into the system: run by 'make check-deb' "
                    "(PFX_DEB_TESTS=1), not by 'make check'")
    if os.geteuid() != 0:
        pytest.skip("needs root: installs Debian packages into the system")
    if not debsys.in_private_netns():
        pytest.skip("must run inside a private network namespace "
                    "(make check-deb does: unshare -n)")
    why = debsys.why_not_clean()
    if why:
        pytest.skip("system not clean for the Debian package test: " + why)
    if not installed("stock"):
        pytest.fail("build/inst/stock missing (the receivers): run 'make build-stock'")


def our_debs(names=("postfix",)):
    try:
        return debsys.debs(DEB_DIR, names)
    except RuntimeError as e:
        pytest.fail("%s: run 'make deb'" % e)


def msg(rcpt, tag, i):
    msgid = "<%s.%d.%s@sender.test>" % (tag, i, os.urandom(6).hex())
    return msgid, ("From: tester@sender.test\nTo: %s\nSubject: %s %d\n"
                   "Message-ID: %s\n\nTest message %d.\n" % (rcpt, tag, i, msgid, i)).encode()


def send(sp, rcpt, tag, i=0):
    msgid, data = msg(rcpt, tag, i)
    sp.sendmail(rcpt, data)
    return msgid


@pytest.fixture(scope="class")
def installed_fresh():
    """Our packages, newly installed (debconf: Internet Site), with the test
    CA trusted; purged afterwards."""
    preconditions()
    debs = our_debs()
    state = debsys.SystemState()
    state.block_service_starts()
    state.ensure_snakeoil()
    sp = debsys.SystemPostfix()
    world = World("debian-package-fresh", flavour="stock")
    try:
        sp.preseed("Internet Site")
        sp.install_output = sp.dpkg("-i", *debs)
        debsys.add_ca(world.ca.cert)
        yield sp, world
    finally:
        world.stop()
        sp.stop()
        sp.purge()
        problems = state.restore()
        assert not problems, problems


class TestFreshInstall:
    def test_packaged_configuration(self, installed_fresh):
        """Debian's generated configuration, with the series' master.cf:
        tlsproxy enabled and chrooted like smtp and scache; postfix check is
        clean; Debian's TLS client settings are there."""
        sp, _ = installed_fresh
        want = subprocess.run(["dpkg-deb", "-f", our_debs()[0], "Version"], check=True,
                              capture_output=True, text=True).stdout.strip()
        assert sp.version() == want
        for service in ("tlsproxy/unix", "smtp/unix", "scache/unix"):
            fields = sp.postconf("-M", service).split()
            assert fields, "%s missing from the packaged master.cf" % service
            assert fields[4] == "y", "%s is not chrooted: %s" % (service, fields)
        with open("/usr/share/postfix/master.cf.dist") as f:
            assert any(line.split()[:2] == ["tlsproxy", "unix"] for line in f
                       if line.strip()), "tlsproxy not enabled in master.cf.dist"
        assert sp.postconf("-h", "smtp_tls_CAfile").strip() == debsys.CA_BUNDLE
        assert sp.postconf("-h", "smtp_tls_security_level").strip() == "may"
        assert sp.postconf("-hx", "smtp_tls_session_cache_database").strip() == \
            "btree:/var/lib/postfix/smtp_scache"
        assert sp.postconf("-h", "smtp_tls_connection_reuse").strip() == "no"
        # The first check sets up the chroot (Debian's configure-instance
        # says what it copies); then it has nothing to say.
        rc, out = sp.check()
        assert rc == 0 and "warning" not in out and "fatal" not in out, out
        rc, out = sp.check()
        assert (rc, out) == (0, ""), out
        # The packaged build has no TLSRPT (Debian 12 lacks libtlsrpt).
        assert "-DUSE_TLSRPT" not in open("/usr/share/postfix/makedefs.out").read()

    def test_spaced_mail_reused_at_may_encrypt_secure(self, installed_fresh):
        sp, world = installed_fresh
        n = 5
        recv = {}
        for level, addr, _ in LEVELS:
            recv[level] = world.postfix_receiver(
                "r-" + level, [addr], cert=world.cert("mx-" + level,
                                                      ["mx-%s.test" % level]))
        routes = {"%s.test" % level: "[%s]:25" % addr for level, addr, _ in LEVELS}
        sp.configure_for_test(routes)
        sp.set(smtp_tls_connection_reuse="yes",
               smtp_tls_policy_maps=sp.write_map("tls_policy", {
                   "[%s]:25" % addr: pol for _, addr, pol in LEVELS if pol}))
        assert_check_clean(sp)
        world.start()
        sp.start()
        ids = {level: [] for level, _, _ in LEVELS}
        for i in range(n):
            if i:
                time.sleep(SPACING)
            for level, _, _ in LEVELS:
                ids[level].append(send(sp, "user@%s.test" % level, "lvl-" + level, i))
        for level, _, _ in LEVELS:
            r = recv[level]
            wait_for(lambda: r.counts().messages >= n, 60, "%d messages at %s" % (n, level))
            sp.wait_log(r"to=<user@%s\.test>.*status=sent" % level, n, 30)
            c = r.counts()
            wait_for(lambda: len(r.message_ids()) >= n, 30, "Message-IDs at " + level)
            assert sorted(r.message_ids()) == sorted(ids[level]), level
            assert (c.messages, c.plaintext_messages) == (n, 0), (level, c)
            assert (c.connections, c.handshakes) == (1, 1), (level, c)
            assert sp.conn_uses(r"%s\.test" % level) == list(range(2, n + 1)), level
        for lv, _, _ in LEVELS:
            report("level %s, %d spaced messages: %s" % (lv, n, fmt(recv[lv].counts())))
        # tlsproxy did the handshakes, chrooted in the queue directory.
        proxies = sp.children("tlsproxy")
        assert proxies, "no tlsproxy process"
        for pid in proxies:
            assert os.readlink("/proc/%d/root" % pid) == "/var/spool/postfix"
        assert len(sp.grep(r"TLS connection reused to")) >= 3 * (n - 1)
        assert_check_clean(sp)

    def test_core_policy_pairs(self, installed_fresh):
        """Stricter policies never ride weaker connections, under Debian's
        defaults plus smtp_tls_connection_reuse = yes."""
        sp, world = installed_fresh
        recv, routes, policy = {}, {}, {}
        for name, addr, weak, strict in PAIRS:
            recv[name] = world.postfix_receiver(
                "p-" + name, [addr], cert=world.cert(
                    "mx-p" + addr.rsplit(".", 1)[1],
                    ["mx-p%s.test" % addr.rsplit(".", 1)[1]]), **NARROW_SERVER)
            routes["weak-%s.test" % name] = "[%s]" % addr
            routes["strict-%s.test" % name] = "[%s]:25" % addr
            policy["[%s]" % addr] = weak
            policy["[%s]:25" % addr] = strict
        sp.configure_for_test(routes)
        sp.set(smtp_tls_connection_reuse="yes",
               smtp_tls_policy_maps=sp.write_map("tls_policy", policy),
               default_destination_concurrency_failed_cohort_limit=10)
        world.start()
        if not sp.running:
            sp.start()
        weak = {name: send(sp, "user@weak-%s.test" % name, "weak-" + name)
                for name, _, _, _ in PAIRS}
        for name, _, _, _ in PAIRS:
            wait_for(lambda: weak[name] in recv[name].message_ids(), 30,
                     "the weak message of " + name)
            sp.wait_log(r"to=<user@weak-%s\.test>.*status=sent" % name, timeout=30)
        time.sleep(SPACING)
        strict = {name: send(sp, "user@strict-%s.test" % name, "strict-" + name)
                  for name, _, _, _ in PAIRS}
        for name, _, _, _ in PAIRS:
            sp.wait_log(r"to=<user@strict-%s\.test>.*status=(sent|deferred)" % name,
                        timeout=30)
        time.sleep(1)
        for name, _, weak_pol, strict_pol in PAIRS:
            assert strict[name] not in recv[name].message_ids(), \
                "%s: the strict message (%r) rode a connection made for %r\n%s" % (
                    name, strict_pol, weak_pol, sp.log_tail())
            assert sp.grep(r"to=<user@strict-%s\.test>.*status=deferred" % name)
            assert recv[name].counts().plaintext_messages == 0

    @pytest.mark.parametrize("session_cache", ["debian", "none"])
    def test_new_connections_resume_sessions(self, installed_fresh, session_cache):
        """With reuse on, a connection that outlived
        smtp_tls_connection_cache_time_limit is replaced by a new one, whose
        handshake resumes the TLS session through tlsproxy and Debian's
        smtp_tls_session_cache_database.  Control: without that database,
        nothing is resumed."""
        sp, world = installed_fresh
        n = 3 if session_cache == "debian" else 2
        addr = RESUME_ADDR[session_cache]
        r = world.postfix_receiver("resume-" + session_cache, [addr],
                                   cert=world.cert("mx-resume", ["mx-resume.test"]))
        sp.configure_for_test({"resume.test": "[%s]:25" % addr})
        params = {"smtp_tls_connection_reuse": "yes", "smtp_tls_policy_maps": ""}
        if session_cache == "none":
            params["smtp_tls_session_cache_database"] = ""
        sp.set(**params)
        world.start()
        if not sp.running:
            sp.start()
        # The series' TLS cache time (8s); a build without it: the plain one.
        limit = sp.postconf("-h", "smtp_tls_connection_cache_time_limit",
                            check=False).strip() or \
            sp.postconf("-h", "smtp_connection_cache_time_limit").strip()
        limit = int(limit.rstrip("s"))
        for i in range(n):
            if i:
                time.sleep(limit + 4)
            send(sp, "user@resume.test", "resume-" + session_cache, i)
            wait_for(lambda: r.counts().messages >= i + 1, 60, "message %d" % i)
        c = r.counts()
        assert (c.messages, c.connections, c.handshakes) == (n, n, n), c
        if session_cache == "debian":
            assert c.resumed == n - 1, c
        else:
            assert c.resumed == 0, c
        report("resumption, session cache %s, %d messages: %s" % (session_cache, n, fmt(c)))
        if session_cache == "none":
            # Back to Debian's setting for whatever runs next.
            sp.set(smtp_tls_session_cache_database="btree:${data_directory}/smtp_scache")


def test_upgrade_from_debian_12_and_downgrade():
    """Debian 12's own postfix (3.7.11), configured by its postinst; mail
    queued while the destination is down; dpkg -i of our package: the
    configuration is kept, the queued mail is delivered exactly once, reuse
    works once the administrator turns it on; then dpkg -i of Debian 12's
    package again (downgrade) with mail queued: none is lost."""
    preconditions()
    debs = our_debs()
    old = debsys.debs(OLD_DIR, ["postfix"])
    state = debsys.SystemState()
    state.block_service_starts()
    state.ensure_snakeoil()
    sp = debsys.SystemPostfix()
    world = World("debian-package-upgrade", flavour="stock")
    info = {}
    try:
        sp.preseed("Internet Site")
        sp.dpkg("-i", *old)
        old_version = sp.version()
        assert old_version.startswith("3.7."), old_version
        sp.configure_for_test({"upgrade.test": "[%s]:25" % UPGRADE_ADDR})
        r = world.postfix_receiver("r-upgrade", [UPGRADE_ADDR],
                                   cert=world.cert("mx-upgrade", ["mx-upgrade.test"]))
        sp.start()
        # Destination down: the mail is deferred and stays queued.
        queued1 = [send(sp, "user@upgrade.test", "before-upgrade", i) for i in range(5)]
        sp.wait_log(r"to=<user@upgrade\.test>.*status=deferred", 5, 60)
        assert len(sp.queued()) == 5
        main_before = set(sp.postconf("-n").splitlines())
        with open("/etc/postfix/master.cf") as f:
            master_before = f.read()
        sp.stop()        # what the old prerm does (policy-rc.d kept it from it)

        sp.dpkg("-i", *debs)
        new_version = sp.version()
        assert new_version != old_version and "tlsreuse" in new_version, new_version
        main_after = set(sp.postconf("-n").splitlines())
        # Debian's own migration (postinst, versions before 3.9.1-8):
        # "readme_directory = no" and "html_directory = no" are commented
        # out.  Nothing else may go.
        lost = main_before - main_after
        assert lost <= {"readme_directory = no", "html_directory = no"}, \
            "settings lost: %s" % lost
        info["main.cf settings changed by the postinst"] = "removed %s, added %s" % (
            sorted(lost), sorted(main_after - main_before))
        # The only change to master.cf: postinst enabled the tlsproxy entry
        # that Debian 12 shipped commented out (first upgrade to the series).
        with open("/etc/postfix/master.cf") as f:
            master_after = f.read()
        changed = [(a, b) for a, b in zip(master_before.splitlines(),
                                          master_after.splitlines()) if a != b]
        assert len(master_before.splitlines()) == len(master_after.splitlines()) \
            and len(changed) == 1 and changed[0][0] == "#" + changed[0][1] \
            and changed[0][1].split()[:2] == ["tlsproxy", "unix"], \
            "master.cf changed by the upgrade other than tlsproxy enabled: %s" % changed
        info["master.cf line enabled by the upgrade"] = changed[0][1]
        # Neither Debian 12's nor our maintainer scripts run postfix
        # upgrade-configuration: the administrator does, as Postfix's
        # upgrade instructions say.
        sp.postfix("upgrade-configuration")
        with open("/etc/postfix/master.cf") as f:
            master_upgraded = f.read()
        info["master.cf lines added by upgrade-configuration"] = sorted(
            set(master_upgraded.splitlines()) - set(master_before.splitlines()))
        # Debian 12's master.cf had tlsproxy commented out; the upgrade
        # enabled it, chrooted like smtp and scache.
        tlsproxy = sp.postconf("-M", "tlsproxy/unix").strip()
        info["tlsproxy after the upgrade"] = tlsproxy or "(commented out)"
        assert tlsproxy, "tlsproxy not enabled by the upgrade"

        sp.start()
        assert len(sp.queued()) == 5, "queue from 3.7 not kept"
        r.start()
        sp.flush()
        wait_for(lambda: len(r.message_ids()) >= 5, 60, "the 5 queued messages")
        wait_for(lambda: not sp.queued(), 30, "an empty queue")

        # The administrator turns reuse on.
        sp.set(smtp_tls_connection_reuse="yes")
        rc, warn = sp.check()
        assert (rc, warn) == (0, ""), warn
        fields = sp.postconf("-M", "tlsproxy/unix").split()
        assert fields and fields[4] == "y", fields
        c0 = r.counts()
        spaced = []
        for i in range(5):
            if i:
                time.sleep(SPACING)
            spaced.append(send(sp, "user@upgrade.test", "after-upgrade", i))
        wait_for(lambda: len(r.message_ids()) >= 10, 60, "10 messages")
        sp.wait_log(r"to=<user@upgrade\.test>.*status=sent", 10, 30)
        c = r.counts()
        info["receiver, the 5 queued messages (reuse off)"] = fmt(c0)
        info["receiver, then 5 spaced messages (reuse on)"] = \
            "connections +%d, handshakes +%d, messages +%d" % (
                c.connections - c0.connections, c.handshakes - c0.handshakes,
                c.messages - c0.messages)
        assert (c.connections - c0.connections, c.handshakes - c0.handshakes) == (1, 1), c
        assert sp.conn_uses(r"upgrade\.test")[-4:] == [2, 3, 4, 5], sp.conn_uses()
        assert c.plaintext_messages == 0

        # Downgrade to Debian 12's package with mail queued.
        r.stop()
        queued2 = [send(sp, "user@upgrade.test", "before-downgrade", i) for i in range(3)]
        sp.wait_log(r"to=<user@upgrade\.test>.*status=deferred", 5 + 3, 60)
        sp.stop()
        sp.dpkg("-i", *old)
        assert sp.version() == old_version
        sp.start()
        assert len(sp.queued()) == 3
        r.start()
        sp.flush()
        wait_for(lambda: len(r.message_ids()) >= 13, 60, "13 messages")
        wait_for(lambda: not sp.queued(), 30, "an empty queue")
        time.sleep(2)
        got = r.message_ids()
        want = queued1 + spaced + queued2
        assert sorted(got) == sorted(want), "each message exactly once"
        info["delivered/sent (5 queued before the upgrade, 5 after, 3 queued "
             "before the downgrade)"] = "%d/%d" % (len(got), len(want))
        for k, v in info.items():
            report("upgrade: %s: %s" % (k, v))
    finally:
        world.stop()
        sp.stop()
        sp.purge()
        problems = state.restore()
        assert not problems, problems
