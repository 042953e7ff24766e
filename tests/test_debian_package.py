"""The Debian package of the series (make deb), installed as an administrator
installs it, under Debian's defaults, in a clean system of the release it
was built for.

Run by `make check-deb` (scripts/check-deb; DEB_RELEASE=trixie, or bookworm
for the backport): as root, in a private network and mount namespace, with
build/<base>/deb/<release>/ built, the release's own postfix package downloaded to
build/<base>/deb-old/<release>/, and build/<base>/chroot/test-<release> made with
debootstrap plus the packages that both postfix packages depend on.  Each
test gets a private copy of that clean system (harness.debsys.CleanSystem,
an overlay thrown away afterwards); the host's packages and MTA are never
touched (checked before and after).  The packages go in with dpkg -i;
Debian's maintainer scripts write the configuration (debconf "Internet
Site": main.cf.debian + main.cf.tls, i.e. smtp_tls_CAfile =
/etc/ssl/certs/ca-certificates.crt, smtp_tls_security_level = may,
smtp_tls_session_cache_database = btree:${data_directory}/smtp_scache;
master.cf with smtp, tlsproxy and scache chrooted).  policy-rc.d keeps the
maintainer scripts from starting Postfix; the test starts the system's
instance itself (chroot /usr/sbin/postfix start), in its network namespace,
with these additions only: inet_interfaces = 127.0.0.1 (the receivers have
other addresses), maillog_file (a log to count from), transport_maps to the
receivers, and per test smtp_tls_connection_reuse = yes and the TLS policy
under test.  The test CA is added the Debian way
(/usr/local/share/ca-certificates, update-ca-certificates).

Under make check (no PFX_DEB_TESTS) these tests are skipped: make check
runs them next, through scripts/check-deb.  Under check-deb nothing is
skipped: a test that cannot run fails with the reason (and check-deb fails
when pytest reports a skip).

Counts are taken at the receivers (stock Postfix from build/<base>/inst/stock, on
the host, in the same network namespace).
"""

import os
import re
import subprocess
import time

import pytest

from harness import debsys
from harness.base import BASE, BUILD, make_hint
from harness.postfix import installed
from harness.world import World, wait_for

RELEASE = debsys.RELEASE
DEB_DIR = os.environ.get("DEB_DIR", os.path.join(BUILD, "deb", RELEASE))
OLD_DIR = os.path.join(BUILD, "deb-old", RELEASE)
# The release's own postfix, the upgrade test's starting point, and whether
# the release's libraries give TLSRPT.
OLD_VERSION_RE = {"trixie": r"^3\.10\.13-0\+deb13u1$", "bookworm": r"^3\.7\."}[RELEASE]
TLSRPT = {"trixie": True, "bookworm": False}[RELEASE]

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


REPORT = os.path.join(BUILD, "deb", RELEASE, "test-report.txt")


def report(line):
    """Counts for the packager's README, in build/<base>/deb/<release>/test-report.txt."""
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
        pytest.skip("run by 'make check-deb' in clean chroots (PFX_DEB_TESTS=1), "
                    "which make check runs next")
    why = debsys.why_not_isolated()
    if why:
        pytest.fail("cannot run the Debian package test: " + why)
    if not installed("stock"):
        pytest.fail("build/%s/inst/stock missing (the receivers): run '%s'"
                    % (BASE, make_hint("build-stock")))


def our_debs(names=("postfix",)):
    try:
        return debsys.debs(DEB_DIR, names)
    except RuntimeError as e:
        pytest.fail("%s: run 'make deb' (DEB_RELEASE=%s)" % (e, RELEASE))


def old_debs():
    try:
        return debsys.debs(OLD_DIR, ["postfix"])
    except RuntimeError as e:
        pytest.fail("%s: scripts/check-deb downloads the release's own postfix" % e)


def msg(rcpt, tag, i):
    msgid = "<%s.%d.%s@sender.test>" % (tag, i, os.urandom(6).hex())
    return msgid, ("From: tester@sender.test\nTo: %s\nSubject: %s %d\n"
                   "Message-ID: %s\n\nTest message %d.\n" % (rcpt, tag, i, msgid, i)).encode()


def send(sp, rcpt, tag, i=0):
    msgid, data = msg(rcpt, tag, i)
    sp.sendmail(rcpt, data)
    return msgid


class clean_system:
    """A clean system of the release with a SystemPostfix in it; on the
    way out: stopped, purged (nothing of Postfix may stay), thrown away, and
    the host checked unchanged."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        preconditions()
        self.host = debsys.host_snapshot()
        self.cs = debsys.CleanSystem(self.name).__enter__()
        self.sp = debsys.SystemPostfix(self.cs)
        return self.sp

    def __exit__(self, exc_type, *exc):
        problems = []
        try:
            self.sp.stop()
            self.sp.purge()
            problems = self.cs.leftovers()
        finally:
            self.cs.close()
        host = debsys.host_snapshot()
        if host != self.host:
            problems.append("the host changed: before %s, after %s" % (self.host, host))
        if exc_type is None:
            assert not problems, problems
        return False


@pytest.fixture(scope="class")
def installed_fresh():
    """Our packages, newly installed (debconf: Internet Site) in a clean
    system, with the test CA trusted; purged afterwards."""
    world = None
    with clean_system("fresh") as sp:
        try:
            world = World("debian-package-fresh", flavour="stock")
            sp.preseed("Internet Site")
            sp.install_output = sp.dpkg("-i", *our_debs())
            sp.cs.add_ca(world.ca.cert)
            yield sp, world
        finally:
            if world:
                world.stop()


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
        assert any(line.split()[:2] == ["tlsproxy", "unix"]
                   for line in sp.read("/usr/share/postfix/master.cf.dist").splitlines()
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
        # TLSRPT as the release allows: trixie's package has it (libtlsrpt0),
        # the bookworm backport not (Debian 12 has no libtlsrpt).
        makedefs = sp.read("/usr/share/postfix/makedefs.out")
        ldd = sp.cs.run(["ldd", "/usr/lib/postfix/sbin/smtp"]).stdout
        if TLSRPT:
            assert "-DUSE_TLSRPT" in makedefs and "libtlsrpt" in ldd, ldd
            assert sp.postconf("-h", "smtp_tlsrpt_enable").strip() == "no"
        else:
            assert "-DUSE_TLSRPT" not in makedefs and "libtlsrpt" not in ldd, ldd
        report("%s: postfix %s installed in a clean %s system; TLSRPT %s" % (
            RELEASE, sp.version(), RELEASE, "yes" if TLSRPT else "no"))

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
            assert os.readlink("/proc/%d/root" % pid) == sp.cs.path("/var/spool/postfix")
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


def test_upgrade_from_the_releases_postfix_and_downgrade():
    """The release's own postfix (trixie: 3.10.13-0+deb13u1; bookworm:
    3.7.x), configured by its postinst; mail queued while the destination
    is down; dpkg -i of our package: the configuration is kept, the queued
    mail is delivered exactly once, reuse works once the administrator
    turns it on; then dpkg -i of the release's package again (downgrade)
    with mail queued: none is lost; purge leaves nothing."""
    preconditions()
    debs = our_debs()
    with clean_system("upgrade") as sp:
        old = old_debs()
        world = World("debian-package-upgrade", flavour="stock")
        info = {}
        try:
            _upgrade_and_downgrade(sp, world, debs, old, info)
        finally:
            world.stop()
        for k, v in info.items():
            report("upgrade: %s: %s" % (k, v))


def _upgrade_and_downgrade(sp, world, debs, old, info):
    sp.preseed("Internet Site")
    sp.dpkg("-i", *old)
    old_version = sp.version()
    assert re.match(OLD_VERSION_RE, old_version), old_version
    info["from"] = old_version
    sp.configure_for_test({"upgrade.test": "[%s]:25" % UPGRADE_ADDR})
    r = world.postfix_receiver("r-upgrade", [UPGRADE_ADDR],
                               cert=world.cert("mx-upgrade", ["mx-upgrade.test"]))
    sp.cs.add_ca(world.ca.cert)
    sp.start()
    # Destination down: the mail is deferred and stays queued.
    queued1 = [send(sp, "user@upgrade.test", "before-upgrade", i) for i in range(5)]
    sp.wait_log(r"to=<user@upgrade\.test>.*status=deferred", 5, 60)
    assert len(sp.queued()) == 5
    main_before = set(sp.postconf("-n").splitlines())
    master_before = sp.read("/etc/postfix/master.cf")
    sp.stop()        # what the old prerm does (policy-rc.d kept it from it)

    sp.dpkg("-i", *debs)
    new_version = sp.version()
    assert new_version != old_version and "tlsreuse" in new_version, new_version
    info["to"] = new_version
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
    # that the release's package shipped commented out.
    master_after = sp.read("/etc/postfix/master.cf")
    changed = [(a, b) for a, b in zip(master_before.splitlines(),
                                      master_after.splitlines()) if a != b]
    assert len(master_before.splitlines()) == len(master_after.splitlines()) \
        and len(changed) == 1 and changed[0][0] == "#" + changed[0][1] \
        and changed[0][1].split()[:2] == ["tlsproxy", "unix"], \
        "master.cf changed by the upgrade other than tlsproxy enabled: %s" % changed
    info["master.cf line enabled by the upgrade"] = changed[0][1]
    # Neither Debian's nor our maintainer scripts run postfix
    # upgrade-configuration: the administrator does, as Postfix's upgrade
    # instructions say.
    sp.postfix("upgrade-configuration")
    master_upgraded = sp.read("/etc/postfix/master.cf")
    info["master.cf lines added by upgrade-configuration"] = sorted(
        set(master_upgraded.splitlines()) - set(master_after.splitlines()))
    tlsproxy = sp.postconf("-M", "tlsproxy/unix").strip()
    info["tlsproxy after the upgrade"] = tlsproxy or "(commented out)"
    assert tlsproxy, "tlsproxy not enabled by the upgrade"

    sp.start()
    assert len(sp.queued()) == 5, "queue of %s not kept" % old_version
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

    # Downgrade to the release's package with mail queued.
    r.stop()
    queued2 = [send(sp, "user@upgrade.test", "before-downgrade", i) for i in range(3)]
    sp.wait_log(r"to=<user@upgrade\.test>.*status=deferred", 5 + 3, 60)
    sp.stop()
    sp.dpkg("-i", *old)
    assert sp.version() == old_version
    rc, warn = sp.check()
    info["postfix check after the downgrade"] = warn or "(silent)"
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
    sp.stop()
    # Purge: nothing of Postfix stays (checked by clean_system on exit).
    sp.purge()


def _repack(cs, deb, version, name):
    """A copy of deb with another version, made in the system with
    dpkg-deb: a stand-in for a package that does not exist yet."""
    src = cs.copy_in([deb])[0]
    d = "/root/repack-%s-%s" % (name, version)
    cs.run(["dpkg-deb", "-R", src, d])
    control = cs.path(d + "/DEBIAN/control")
    with open(control) as f:
        text = f.read()
    text = re.sub(r"(?m)^Version: .*$", "Version: " + version, text)
    with open(control, "w") as f:
        f.write(text)
    os.makedirs(cs.path("/root/repo"), exist_ok=True)
    out = "/root/repo/%s_%s_amd64.deb" % (name, version)
    cs.run(["dpkg-deb", "-Zxz", "-b", d, out])
    return out


def _local_repo(cs):
    """An apt repository of the files in /root/repo (Packages written here,
    the fields dpkg-deb gives plus Filename, Size, SHA256), and apt
    options that make it the only source (the network is not reachable)."""
    import hashlib
    entries = []
    for f in sorted(os.listdir(cs.path("/root/repo"))):
        if not f.endswith(".deb"):
            continue
        p = cs.path("/root/repo/" + f)
        fields = cs.run(["dpkg-deb", "-f", "/root/repo/" + f]).stdout.rstrip("\n")
        data = open(p, "rb").read()
        entries.append("%s\nFilename: ./%s\nSize: %d\nSHA256: %s\n" % (
            fields, f, len(data), hashlib.sha256(data).hexdigest()))
    with open(cs.path("/root/repo/Packages"), "w") as f:
        f.write("\n".join(entries))
    with open(cs.path("/root/repo.list"), "w") as f:
        f.write("deb [trusted=yes] file:/root/repo ./\n")
    opts = ["-o", "Dir::Etc::SourceList=/root/repo.list", "-o", "Dir::Etc::SourceParts=-"]
    cs.run(["apt-get"] + opts + ["update"])
    return opts


def test_recommended_update_path():
    """The README's update path.  Our package sorts above the Debian
    version it was built from and below Debian's next update of it
    (trixie: 0+deb13u1+tlsreuse1 < 0+deb13u2), so that update would
    replace the series: the README says to hold postfix (apt-mark hold).
    Checked with a stand-in for the next Debian update (the release's own
    package repacked with the next version) in a local apt repository:
    without the hold, apt-get upgrade would install it; with the hold, it
    keeps ours and says so; the rebuild on the new Debian source (a
    stand-in: ours repacked as <next>+tlsreuse1) sorts above the update
    and installs over the hold as the README says.  On bookworm the
    backport sorts above every bookworm postfix (3.7.x) and below the
    trixie build, so no hold is needed there; checked the same way."""
    preconditions()
    debs = our_debs()
    with clean_system("update-path") as sp:
        old = old_debs()
        cs = sp.cs
        sp.preseed("Internet Site")
        sp.dpkg("-i", *debs)
        ours = sp.version()
        base = re.sub(r"\+tlsreuse.*$", "", ours)
        if RELEASE == "trixie":
            m = re.match(r"^(.*\+deb13u)(\d+)$", base)
            assert m, base
            nxt = "%s%d" % (m.group(1), int(m.group(2)) + 1)
        else:
            nxt = re.sub(r"u(\d+)$", lambda m: "u%d" % (int(m.group(1)) + 1),
                         sp.cs.run(["dpkg-deb", "-f", cs.copy_in(old)[0], "Version"]
                                   ).stdout.strip())
        _repack(cs, old[0], nxt, "postfix")
        opts = _local_repo(cs)
        info = {"installed": ours, "next Debian update (stand-in)": nxt}
        sim = cs.run(["apt-get"] + opts + ["-s", "upgrade"]).stdout
        would_replace = bool(re.search(r"(?m)^Inst postfix \[%s\] \(%s " % (
            re.escape(ours), re.escape(nxt)), sim))
        info["apt-get upgrade without a hold replaces ours"] = would_replace
        if RELEASE == "trixie":
            assert would_replace, sim
            cs.run(["apt-mark", "hold", "postfix"])
            up = cs.run(["apt-get"] + opts + ["-y", "upgrade"])
            assert sp.version() == ours, "the hold did not keep the series"
            kept = re.search(r"(?s)kept back:\s*\n\s*postfix|held.*postfix", up.stdout)
            assert kept, up.stdout
            info["apt-get upgrade with the hold"] = "kept %s, reported held/kept back" % ours
            # The rebuild on the new Debian source.
            rebuild = _repack(cs, debs[0], nxt + "+tlsreuse1", "postfix")
            assert cs.run(["dpkg", "--compare-versions", nxt + "+tlsreuse1", "gt", nxt],
                          check=False).returncode == 0
            r = cs.run(["apt-get"] + opts + ["-y", "--allow-change-held-packages",
                                             "install", rebuild], check=False)
            assert r.returncode == 0, r.stdout + r.stderr
            assert sp.version() == nxt + "+tlsreuse1", sp.version()
            # Installing a new version clears the hold: the README says to
            # hold again.
            held = cs.run(["apt-mark", "showhold"]).stdout.split()
            info["held after installing the rebuild"] = held or "nothing (hold again)"
            cs.run(["apt-mark", "hold", "postfix"])
            assert cs.run(["apt-mark", "showhold"]).stdout.split() == ["postfix"]
            sim = cs.run(["apt-get"] + opts + ["-s", "upgrade"]).stdout
            assert not re.search(r"(?m)^Inst postfix ", sim), sim
            info["the rebuild %s+tlsreuse1 against the update %s" % (nxt, nxt)] = \
                "apt-get upgrade has nothing to do"
        else:
            assert not would_replace, sim
            up = cs.run(["apt-get"] + opts + ["-y", "upgrade"])
            assert sp.version() == ours
            info["apt-get upgrade"] = "kept %s" % ours
        rc, warn = sp.check()
        assert rc == 0 and "warning" not in warn, warn
        for k, v in info.items():
            report("update path: %s: %s" % (k, v))
