"""The system's Postfix, installed from Debian packages into the real system
paths (dpkg -i), for tests of the Debian package (test_debian_package.py).

Unlike harness.postfix (private instances under build/), this is the one
Postfix of the machine: /etc/postfix, /var/spool/postfix, /usr/sbin/postfix.
Its tests must run as root inside a private network namespace (the master
and its children inherit the namespace of whoever runs "postfix start"), and
must leave the machine as they found it:

    state = SystemState()                 # nothing of Postfix may be there
    sp = SystemPostfix()
    try:
        sp.preseed("Internet Site")
        sp.dpkg("-i", deb)                # maintainer scripts do not start
        ...                               # it (policy-rc.d exits 101)
        sp.start(); ...; sp.stop()
    finally:
        sp.stop(); sp.purge(); state.restore()

Only "postfix stop" stops the system instance; a master that does not stop
is killed by the PID in its pid file, and only when it runs in this
process's network namespace (i.e. it is ours).
"""

import glob
import hashlib
import json
import os
import re
import signal
import subprocess
import time

from .proc import children_of

LOG = "/var/log/postfix-tlsreuse-test.log"
POLICY_RC_D = "/usr/sbin/policy-rc.d"
CA_DIR = "/usr/local/share/ca-certificates"
CA_NAME = "postfix-tlsreuse-test-ca.crt"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
SNAKEOIL_KEY = "/etc/ssl/private/ssl-cert-snakeoil.key"
SNAKEOIL_PEM = "/etc/ssl/certs/ssl-cert-snakeoil.pem"
LOG_RE = re.compile(r"^(\S+(?: +\S+ +\S+)?) \S+ ([^\s\[]+)\[(\d+)\]: (.*)$")

# Files that Postfix's maintainer scripts create or change outside the
# package's own files (restored by SystemState.restore()).
TOUCHED_FILES = ["/etc/aliases", "/etc/aliases.db", "/etc/mailname", LOG]
# What must not exist before the first install, and after the purge.
POSTFIX_PATHS = ["/etc/postfix", "/var/spool/postfix", "/var/lib/postfix",
                 "/usr/sbin/postfix", "/usr/lib/postfix", "/etc/init.d/postfix",
                 "/etc/rsyslog.d/postfix.conf",
                 "/etc/systemd/system/multi-user.target.wants/postfix.service",
                 os.path.join(CA_DIR, CA_NAME)]


def run(argv, check=True, env=None, input=None):
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(argv, capture_output=True, text=True, env=e, input=input)
    if check and r.returncode != 0:
        raise RuntimeError("%s: exit %d\n%s%s" % (" ".join(argv), r.returncode,
                                                   r.stdout, r.stderr))
    return r


def netns(pid="self"):
    return os.readlink("/proc/%s/ns/net" % pid)


def in_private_netns():
    """True inside a network namespace other than init's; where init's is
    not readable, when this namespace has no interface but lo (as after
    unshare -n), whereas the host has others."""
    try:
        return netns() != netns(1)
    except PermissionError:
        with open("/proc/net/dev") as f:
            names = {line.split(":")[0].strip() for line in f.readlines()[2:]}
        return names == {"lo"}


def installed_packages(prefix="postfix"):
    """Installed (or half-installed) packages whose name is prefix or
    prefix-*, as {name: version}."""
    r = run(["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\\n",
             prefix, prefix + "-*"], check=False)
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        # Not "not-installed", and not the build dependencies' metapackage
        # that mk-build-deps (scripts/deb) made.
        if len(parts) >= 3 and parts[2][1] != "n" and not parts[0].endswith("-build-deps"):
            out[parts[0]] = parts[1]
    return out


def mta_packages():
    """Installed packages that provide mail-transport-agent (any MTA)."""
    r = run(["dpkg-query", "-W", "-f", "${Package} ${Provides} ${db:Status-Abbrev}\\n"],
            check=False)
    return [line.split()[0] for line in r.stdout.splitlines()
            if "mail-transport-agent" in line and line.rstrip().endswith("ii")]


def why_not_clean():
    """None when no Postfix or other MTA is on the system, else the reason."""
    pk = installed_packages()
    if pk:
        return "a postfix package is installed (%s): the test installs and purges " \
               "Postfix packages and never touches an existing one" % ", ".join(
                   "%s %s" % kv for kv in sorted(pk.items()))
    mta = mta_packages()
    if mta:
        return "an MTA is installed (%s): installing postfix would remove it" % ", ".join(mta)
    there = [p for p in POSTFIX_PATHS if os.path.lexists(p)]
    if there:
        return "left-overs of a Postfix installation exist: %s" % ", ".join(there)
    return None


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class SystemState:
    """What the tests change outside the packages' own files: taken before
    the first install, put back by restore()."""

    def __init__(self):
        self.files = {}
        for p in TOUCHED_FILES:
            if os.path.lexists(p):
                with open(p, "rb") as f:
                    self.files[p] = (f.read(), os.stat(p).st_mode & 0o7777)
            else:
                self.files[p] = None
        self.bundle = _sha(CA_BUNDLE) if os.path.exists(CA_BUNDLE) else None
        self.policy_rc_d = None         # our policy-rc.d, when we put one there
        self.snakeoil = []              # the snakeoil pair, when we made it

    def ensure_snakeoil(self):
        """Debian's postinst adds its TLS settings (main.cf.tls) to a new
        main.cf only when ssl-cert's snakeoil key exists, which ssl-cert's
        postinst makes on an ordinary Debian system.  Container images may
        lack it: make it as ssl-cert does, and remove it again afterwards."""
        pair = [SNAKEOIL_KEY, SNAKEOIL_PEM]
        if all(os.path.exists(p) for p in pair):
            return
        if any(os.path.exists(p) for p in pair):
            raise RuntimeError("only half of the snakeoil pair exists: %s" % pair)
        run(["make-ssl-cert", "generate-default-snakeoil"])
        self.snakeoil = pair

    def block_service_starts(self):
        """Make sure invoke-rc.d starts no service (policy-rc.d exit 101)."""
        if os.path.exists(POLICY_RC_D):
            if run([POLICY_RC_D, "postfix", "start"], check=False).returncode == 101:
                return
            raise RuntimeError("%s exists and does not deny service starts; "
                               "not replacing it" % POLICY_RC_D)
        with open(POLICY_RC_D, "w") as f:
            f.write("#!/bin/sh\n# test_debian_package.py: no service starts\nexit 101\n")
        os.chmod(POLICY_RC_D, 0o755)
        self.policy_rc_d = POLICY_RC_D

    def restore(self):
        problems = []
        for p, saved in self.files.items():
            if saved is None:
                if os.path.lexists(p):
                    os.unlink(p)
            else:
                data, mode = saved
                with open(p, "wb") as f:
                    f.write(data)
                os.chmod(p, mode)
        # The snakeoil pair first: update-ca-certificates rehashes
        # /etc/ssl/certs, which would link the snakeoil certificate.
        rehash = bool(self.snakeoil)
        for p in self.snakeoil:
            os.unlink(p)
        self.snakeoil = []
        ca = os.path.join(CA_DIR, CA_NAME)
        if os.path.lexists(ca):
            os.unlink(ca)
            rehash = True
        if rehash:
            run(["update-ca-certificates", "--fresh"])
        dangling = [p for p in glob.glob("/etc/ssl/certs/*") if not os.path.exists(p)]
        if dangling:
            problems.append("dangling links in /etc/ssl/certs: %s" % dangling)
        if self.policy_rc_d:
            os.unlink(self.policy_rc_d)
            self.policy_rc_d = None
        if self.bundle and os.path.exists(CA_BUNDLE) and _sha(CA_BUNDLE) != self.bundle:
            problems.append("%s differs from before the test" % CA_BUNDLE)
        left = [p for p in POSTFIX_PATHS if os.path.lexists(p)]
        if left:
            problems.append("left after the purge: %s" % ", ".join(left))
        pk = installed_packages()
        if pk:
            problems.append("packages still installed: %s" % ", ".join(pk))
        so = run(["dpkg-statoverride", "--list"], check=False).stdout
        for f in ("/usr/sbin/postdrop", "/usr/sbin/postqueue"):
            if f in so:
                problems.append("dpkg-statoverride still lists " + f)
        return problems


def add_ca(pem):
    """Trust a CA the way an administrator does on Debian."""
    os.makedirs(CA_DIR, exist_ok=True)
    with open(pem) as src, open(os.path.join(CA_DIR, CA_NAME), "w") as dst:
        dst.write(src.read())
    run(["update-ca-certificates"])


class SystemPostfix:
    name = "system"

    def __init__(self):
        self.started_pid = None
        self.running = False

    # -- packages -------------------------------------------------------

    def dpkg(self, *args):
        """dpkg as an administrator runs it (noninteractive debconf); waits
        while another process holds the dpkg lock."""
        deadline = time.time() + 300
        while True:
            r = run(["dpkg"] + list(args), check=False,
                    env={"DEBIAN_FRONTEND": "noninteractive"})
            if r.returncode == 0:
                return r.stdout + r.stderr
            if "lock" in r.stderr and time.time() < deadline:
                time.sleep(3)
                continue
            raise RuntimeError("dpkg %s: exit %d\n%s%s" % (" ".join(args), r.returncode,
                                                           r.stdout, r.stderr))

    @staticmethod
    def preseed(mailer, mailname="sender.test"):
        sel = ("postfix postfix/main_mailer_type select %s\n"
               "postfix postfix/mailname string %s\n" % (mailer, mailname))
        run(["debconf-set-selections"], input=sel)

    @staticmethod
    def version():
        return installed_packages().get("postfix")

    def purge(self):
        pk = installed_packages()
        if pk:
            self.dpkg("--purge", *sorted(pk, key=lambda p: p == "postfix"))

    # -- configuration --------------------------------------------------

    @staticmethod
    def postconf(*args, check=True):
        return run(["/usr/sbin/postconf"] + list(args), check=check).stdout

    def set(self, **params):
        for k, v in params.items():
            self.postconf("-e", "%s=%s" % (k, v))
        if self.running:
            self.postfix("reload")

    @staticmethod
    def write_map(name, entries):
        """An /etc/postfix hash: table made with postmap (backdated: fresh
        tables are 'hot' for Postfix's daemons)."""
        path = os.path.join("/etc/postfix", name)
        with open(path, "w") as f:
            for k, v in entries.items():
                f.write("%s\t%s\n" % (k, v))
        run(["/usr/sbin/postmap", "hash:" + path])
        past = time.time() - 60
        for p in (path, path + ".db"):
            os.utime(p, (past, past))
        return "hash:" + path

    def configure_for_test(self, routes):
        """The test's additions to Debian's configuration: its own address
        (the receivers are on other 127.0.0.x addresses), a log file, and
        routes to the receivers."""
        self.set(inet_interfaces="127.0.0.1", maillog_file=LOG,
                 transport_maps=self.write_map("transport", {
                     d: "smtp:" + n for d, n in routes.items()}))

    # -- life cycle -----------------------------------------------------

    def postfix(self, *args, check=True):
        return run(["/usr/sbin/postfix"] + list(args), check=check)

    def check(self):
        """postfix check: (exit status, output)."""
        r = self.postfix("check", check=False)
        return r.returncode, (r.stdout + r.stderr).strip()

    def master_pid(self):
        try:
            with open("/var/spool/postfix/pid/master.pid") as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pid = self.started_pid
        if pid is None:
            return None
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                if os.path.basename(f.read().split(b"\0")[0]) != b"master":
                    return None
            return pid
        except OSError:
            return None

    def children(self, process=None):
        master = self.master_pid()
        if master is None:
            return []
        found = []
        for pid in children_of(master):
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    argv0 = os.path.basename(f.read().split(b"\0")[0]).decode()
            except OSError:
                continue
            if process is None or argv0 == process:
                found.append(pid)
        return found

    def start(self):
        r = self.postfix("start", check=False)
        if r.returncode != 0:
            raise RuntimeError("postfix start failed:\n%s%s\n%s" % (
                r.stdout, r.stderr, self.log_tail()))
        self.running = True
        deadline = time.time() + 30
        while time.time() < deadline:
            pid = self.master_pid()
            if pid and self.children("qmgr") and self.children("pickup"):
                assert netns(pid) == netns(), "the system master is not in our netns"
                self.started_pid = pid
                return
            time.sleep(0.2)
        raise RuntimeError("system postfix: master, qmgr or pickup did not start\n"
                           + self.log_tail())

    def stop(self):
        """postfix stop; the master is killed by PID only when it does not
        stop and runs in our network namespace."""
        pid = self.master_pid()
        if pid is None:
            self.running = False
            return
        if os.path.exists("/usr/sbin/postfix"):
            self.postfix("stop", check=False)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.master_pid() is None:
                break
            time.sleep(0.2)
        else:
            if netns(pid) == netns():
                for child in self.children():
                    os.kill(child, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)
        self.running = False

    # -- mail -----------------------------------------------------------

    def sendmail(self, rcpt, data):
        r = subprocess.run(["/usr/sbin/sendmail", "-i", "-f", "tester@sender.test", rcpt],
                           input=data, capture_output=True)
        if r.returncode != 0:
            raise RuntimeError("sendmail: %s" % r.stderr.decode(errors="replace"))

    def queued(self):
        out = run(["/usr/sbin/postqueue", "-j"]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self):
        run(["/usr/sbin/postqueue", "-f"])

    # -- logs -----------------------------------------------------------

    def log_records(self):
        try:
            with open(LOG, errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        return [(m.group(2), int(m.group(3)), m.group(4))
                for m in map(LOG_RE.match, lines) if m]

    def log_tail(self, n=40):
        try:
            with open(LOG, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except FileNotFoundError:
            return "(no %s yet)" % LOG

    def grep(self, pattern):
        rx = re.compile(pattern)
        return [t for (_, _, t) in self.log_records() if rx.search(t)]

    def wait_log(self, pattern, count=1, timeout=60):
        deadline = time.time() + timeout
        while True:
            found = self.grep(pattern)
            if len(found) >= count:
                return found
            if time.time() > deadline:
                raise AssertionError("system postfix: %d of %d log lines matching %r "
                                     "after %ds\n%s" % (len(found), count, pattern,
                                                        timeout, self.log_tail()))
            time.sleep(0.2)

    def conn_uses(self, rcpt_re=""):
        return sorted(int(m) for t in self.grep(r"to=<[^>]*%s[^>]*>.*status=sent" % rcpt_re)
                      for m in re.findall(r"conn_use=(\d+)", t))


def debs(directory, names):
    """The .deb files of the named packages in directory (one version)."""
    out = []
    for n in names:
        found = sorted(glob.glob(os.path.join(directory, "%s_*.deb" % n)))
        if len(found) != 1:
            raise RuntimeError("%s: expected one %s_*.deb, found %d" % (directory, n, len(found)))
        out.append(found[0])
    return out
