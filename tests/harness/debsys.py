"""A clean Debian system of the package's release, and the Postfix installed
into it from Debian packages, for the package tests (test_debian_package.py).

The system is a copy of build/<base>/chroot/test-<release> (scripts/check-deb made
it with debootstrap, plus the packages that the postfix packages depend on),
writable through an overlay mount whose upper layer is thrown away after
the test: every test starts from the same clean system, and the host's own
packages, /etc/postfix, /var/spool/postfix and MTA are never touched.

    with CleanSystem("fresh") as cs:      # overlay + /proc, /dev/pts, /sys
        sp = SystemPostfix(cs)
        sp.preseed("Internet Site")
        sp.dpkg("-i", deb)                # maintainer scripts do not start
        ...                               # it (policy-rc.d exits 101)
        sp.start(); ...; sp.stop()        # master runs chrooted, in our netns
        sp.purge()

The test process must run as root in a private mount namespace (the mounts
go away with it) and a private network namespace (the master and its
children inherit the namespace of whoever runs "postfix start"):
scripts/check-deb runs pytest under "unshare -m -n".
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import time

from .base import BUILD
from .proc import children_of

RELEASE = os.environ.get("DEB_RELEASE", "trixie")
BASE = os.environ.get("DEB_TEST_CHROOT",
                      os.path.join(BUILD, "chroot", "test-" + RELEASE))
RUN = os.path.join(BUILD, "chroot", "run-" + RELEASE)

LOG = "/var/log/postfix-tlsreuse-test.log"
CA_DIR = "/usr/local/share/ca-certificates"
CA_NAME = "postfix-tlsreuse-test-ca.crt"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
LOG_RE = re.compile(r"^(\S+(?: +\S+ +\S+)?) \S+ ([^\s\[]+)\[(\d+)\]: (.*)$")

# What must not exist in the clean system before the first install, and
# after the purge.
POSTFIX_PATHS = ["/etc/postfix", "/var/spool/postfix", "/var/lib/postfix",
                 "/usr/sbin/postfix", "/usr/lib/postfix", "/etc/init.d/postfix",
                 "/etc/rsyslog.d/postfix.conf",
                 "/etc/systemd/system/multi-user.target.wants/postfix.service"]
# The host's: checked unchanged before and after every test.
HOST_PATHS = POSTFIX_PATHS + ["/etc/mailname", "/etc/aliases"]

CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
              "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}


def run(argv, check=True, env=None, input=None):
    r = subprocess.run(argv, capture_output=True, text=True, env=env, input=input)
    if check and r.returncode != 0:
        raise RuntimeError("%s: exit %d\n%s%s" % (" ".join(argv), r.returncode,
                                                   r.stdout, r.stderr))
    return r


def netns(pid="self"):
    return os.readlink("/proc/%s/ns/net" % pid)


def _ns(kind, pid="self"):
    return os.readlink("/proc/%s/ns/%s" % (pid, kind))


def why_not_isolated():
    """None when this process runs as root in private network and mount
    namespaces, else the reason.  The host's namespaces: init's, or where
    those cannot be read, the ones scripts/check-deb saw before unshare
    (PFX_HOST_NETNS, PFX_HOST_MNTNS)."""
    if os.geteuid() != 0:
        return "needs root (mounts, chroot)"
    for kind, var, how in (("net", "PFX_HOST_NETNS", "unshare -n"),
                           ("mnt", "PFX_HOST_MNTNS", "unshare -m")):
        try:
            host = _ns(kind, 1)
        except OSError:
            host = os.environ.get(var)
        if not host:
            return "cannot tell the host's %s namespace (init's is not readable, %s unset)" % (
                kind, var)
        if _ns(kind) == host:
            return "not in a private %s namespace (scripts/check-deb: %s)" % (kind, how)
    return None


def host_packages(prefix="postfix"):
    """Installed (or half-installed) packages on the host named prefix or
    prefix-*, and those that provide mail-transport-agent, as a sorted
    list of "name version status"."""
    r = run(["dpkg-query", "-W", "-f",
             "${Package} ${Version} ${db:Status-Abbrev} ${Provides}\\n"], check=False)
    out = []
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[2][1] == "n":
            continue
        if parts[0] == prefix or parts[0].startswith(prefix + "-") or \
                "mail-transport-agent" in line:
            out.append(" ".join(parts[:3]))
    return sorted(out)


def host_snapshot():
    """What a package test must never change on the host: its postfix and
    MTA packages, and whether Postfix's paths exist (with their mtime)."""
    paths = {}
    for p in HOST_PATHS:
        try:
            st = os.lstat(p)
            paths[p] = (st.st_mode, st.st_mtime_ns)
        except FileNotFoundError:
            paths[p] = None
    return {"packages": host_packages(), "paths": paths}


class CleanSystem:
    """A private, writable copy of the release's clean test chroot."""

    def __init__(self, name):
        if not os.path.isfile(os.path.join(BASE, ".key")):
            raise RuntimeError("%s missing: scripts/check-deb makes it" % BASE)
        self.dir = os.path.join(RUN, name)
        self.root = os.path.join(self.dir, "root")
        self.mounts = []

    def __enter__(self):
        if os.path.exists(self.dir):
            self._umount_all()
            shutil.rmtree(self.dir)
        for d in ("upper", "work", "root"):
            os.makedirs(os.path.join(self.dir, d))
        self._mount(["-t", "overlay", "overlay", "-o",
                     "lowerdir=%s,upperdir=%s/upper,workdir=%s/work" % (
                         BASE, self.dir, self.dir)], self.root)
        self._mount(["-t", "proc", "proc"], self.path("/proc"))
        self._mount(["-t", "sysfs", "sysfs"], self.path("/sys"))
        os.makedirs(self.path("/dev/pts"), exist_ok=True)
        self._mount(["-t", "devpts", "-o", "newinstance,ptmxmode=0666", "devpts"],
                    self.path("/dev/pts"))
        there = [p for p in POSTFIX_PATHS if os.path.lexists(self.path(p))]
        if there:
            raise RuntimeError("the clean system has Postfix files: %s" % there)
        return self

    def __exit__(self, *exc):
        self.close()

    def _mount(self, args, target):
        run(["mount"] + args + [target])
        self.mounts.append(target)

    def _umount_all(self):
        for m in reversed(self.mounts):
            run(["umount", "-l", m], check=False)
        self.mounts = []
        # Whatever else is still mounted under this directory.
        with open("/proc/self/mountinfo") as f:
            left = sorted((line.split()[4] for line in f
                           if line.split()[4].startswith(self.dir + "/")), reverse=True)
        for m in left:
            run(["umount", "-l", m], check=False)

    def close(self):
        self._umount_all()
        if os.path.exists(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, p):
        return self.root + p

    def run(self, argv, check=True, input=None, binary=False):
        a = ["chroot", self.root] + list(argv)
        if binary:
            r = subprocess.run(a, capture_output=True, env=CHROOT_ENV, input=input)
            if check and r.returncode != 0:
                raise RuntimeError("%s: exit %d\n%s" % (" ".join(a), r.returncode,
                                                        r.stderr.decode(errors="replace")))
            return r
        return run(a, check=check, env=CHROOT_ENV, input=input)

    def copy_in(self, files, where="/root/debs"):
        """Copy files into the system; their paths there."""
        d = self.path(where)
        os.makedirs(d, exist_ok=True)
        out = []
        for f in files:
            shutil.copy(f, d)
            out.append(os.path.join(where, os.path.basename(f)))
        return out

    def packages(self, prefix="postfix"):
        r = self.run(["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\\n",
                      prefix, prefix + "-*"], check=False)
        out = {}
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[2][1] != "n":
                out[parts[0]] = parts[1]
        return out

    def add_ca(self, pem):
        """Trust a CA the way an administrator does on Debian."""
        os.makedirs(self.path(CA_DIR), exist_ok=True)
        with open(pem) as src, open(self.path(os.path.join(CA_DIR, CA_NAME)), "w") as dst:
            dst.write(src.read())
        self.run(["update-ca-certificates"])

    def leftovers(self):
        """After the purge: what of Postfix is still there."""
        problems = []
        left = [p for p in POSTFIX_PATHS if os.path.lexists(self.path(p))]
        if left:
            problems.append("left after the purge: %s" % ", ".join(left))
        pk = self.packages()
        if pk:
            problems.append("packages still installed: %s" % ", ".join(pk))
        so = self.run(["dpkg-statoverride", "--list"], check=False).stdout
        for f in ("/usr/sbin/postdrop", "/usr/sbin/postqueue"):
            if f in so:
                problems.append("dpkg-statoverride still lists " + f)
        return problems


class SystemPostfix:
    """The Postfix of a CleanSystem, installed with dpkg as an
    administrator does."""
    name = "system"

    def __init__(self, cs):
        self.cs = cs
        self.started_pid = None
        self.running = False

    # -- packages -------------------------------------------------------

    def dpkg(self, *args):
        """dpkg in the system, as an administrator runs it (noninteractive
        debconf); .deb paths of the host are copied in first."""
        argv = []
        for a in args:
            if a.endswith(".deb") and os.path.isfile(a):
                a = self.cs.copy_in([a])[0]
            argv.append(a)
        r = self.cs.run(["dpkg"] + argv, check=False)
        if r.returncode != 0:
            raise RuntimeError("dpkg %s: exit %d\n%s%s" % (" ".join(argv), r.returncode,
                                                           r.stdout, r.stderr))
        return r.stdout + r.stderr

    def preseed(self, mailer, mailname="sender.test"):
        sel = ("postfix postfix/main_mailer_type select %s\n"
               "postfix postfix/mailname string %s\n" % (mailer, mailname))
        self.cs.run(["debconf-set-selections"], input=sel)

    def version(self):
        return self.cs.packages().get("postfix")

    def purge(self):
        pk = self.cs.packages()
        if pk:
            self.dpkg("--purge", *sorted(pk, key=lambda p: p == "postfix"))

    # -- configuration --------------------------------------------------

    def postconf(self, *args, check=True):
        return self.cs.run(["/usr/sbin/postconf"] + list(args), check=check).stdout

    def set(self, **params):
        for k, v in params.items():
            self.postconf("-e", "%s=%s" % (k, v))
        if self.running:
            self.postfix("reload")

    def write_map(self, name, entries):
        """An /etc/postfix hash: table made with postmap (backdated: fresh
        tables are 'hot' for Postfix's daemons)."""
        path = os.path.join("/etc/postfix", name)
        with open(self.cs.path(path), "w") as f:
            for k, v in entries.items():
                f.write("%s\t%s\n" % (k, v))
        self.cs.run(["/usr/sbin/postmap", "hash:" + path])
        past = time.time() - 60
        for p in (path, path + ".db"):
            os.utime(self.cs.path(p), (past, past))
        return "hash:" + path

    def configure_for_test(self, routes):
        """The test's additions to Debian's configuration: its own address
        (the receivers are on other 127.0.0.x addresses), a log file, and
        routes to the receivers."""
        self.set(inet_interfaces="127.0.0.1", maillog_file=LOG,
                 transport_maps=self.write_map("transport", {
                     d: "smtp:" + n for d, n in routes.items()}))

    def read(self, path):
        with open(self.cs.path(path)) as f:
            return f.read()

    # -- life cycle -----------------------------------------------------

    def postfix(self, *args, check=True):
        return self.cs.run(["/usr/sbin/postfix"] + list(args), check=check)

    def check(self):
        """postfix check: (exit status, output)."""
        r = self.postfix("check", check=False)
        return r.returncode, (r.stdout + r.stderr).strip()

    def master_pid(self):
        try:
            with open(self.cs.path("/var/spool/postfix/pid/master.pid")) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pid = self.started_pid
        if pid is None:
            return None
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                if os.path.basename(f.read().split(b"\0")[0]) != b"master":
                    return None
            if not os.readlink("/proc/%d/root" % pid).startswith(self.cs.root):
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
        """postfix stop; a master that does not stop is killed by PID (it
        runs chrooted in our system and network namespace: it is ours)."""
        pid = self.master_pid()
        if pid is None:
            self.running = False
            return
        if os.path.exists(self.cs.path("/usr/sbin/postfix")):
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
        r = self.cs.run(["/usr/sbin/sendmail", "-i", "-f", "tester@sender.test", rcpt],
                        input=data, check=False, binary=True)
        if r.returncode != 0:
            raise RuntimeError("sendmail: %s" % r.stderr.decode(errors="replace"))

    def queued(self):
        out = self.cs.run(["/usr/sbin/postqueue", "-j"]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self):
        self.cs.run(["/usr/sbin/postqueue", "-f"])

    # -- logs -----------------------------------------------------------

    def _log(self):
        try:
            with open(self.cs.path(LOG), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def log_records(self):
        text = self._log()
        if text is None:
            return []
        return [(m.group(2), int(m.group(3)), m.group(4))
                for m in map(LOG_RE.match, text.splitlines()) if m]

    def log_tail(self, n=40):
        text = self._log()
        if text is None:
            return "(no %s yet)" % LOG
        return "\n".join(text.splitlines()[-n:])

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
