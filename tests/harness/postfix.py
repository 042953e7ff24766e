"""Private Postfix instances made from a tree built by scripts/build.

One installation (build/$BASE/inst/<flavour>, BASE being the series:
harness/base.py) serves any number of instances.  An instance has its own
config, queue and data directories under its base directory, logs through
postlogd to <base>/maillog, and listens only on the loopback addresses that
its master.cf names.  The default "smtp inet" service
is removed so that instances never fight over 127.0.0.1:25.

    pf = Postfix("sender", base, flavour="patched")
    pf.main.update(smtp_tls_security_level="encrypt")
    pf.add_service("127.0.0.1:10025 inet n - n - - smtpd")
    pf.start() ... pf.stop()
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time

from .base import INST, TOP, make_hint  # noqa: F401 (TOP: for the tests)
from .proc import children_of

# maillog_file lines: "<time> <host> <ident>[<pid>]: <text>"
LOG_RE = re.compile(r"^(\S+(?: +\S+ +\S+)?) \S+ ([^\s\[]+)\[(\d+)\]: (.*)$")


def installed_compatibility_level(inst):
    """The compatibility_level that the main.cf of an installation sets."""
    with open(os.path.join(inst, "etc", "postfix", "main.cf")) as f:
        for line in f:
            if line.startswith("compatibility_level"):
                return line.split("=", 1)[1].strip()
    raise RuntimeError("%s/etc/postfix/main.cf sets no compatibility_level" % inst)


def installed(flavour):
    return os.path.exists(os.path.join(INST, flavour, "sbin", "postfix"))


class Postfix:
    def __init__(self, name, base, flavour="patched", tlsproxy=True):
        """tlsproxy: True enables the tlsproxy service in master.cf, False
        disables it, None leaves the installed master.cf as it is."""
        self.name = name
        self.flavour = flavour
        self.inst = os.path.join(INST, flavour)
        if not installed(flavour):
            raise RuntimeError("Postfix %s is not built: run '%s'"
                               % (flavour, make_hint("build" if flavour == "patched"
                                                     else "build-stock")))
        self.base = base
        self.conf = os.path.join(base, "etc")
        self.queue = os.path.join(base, "queue")
        self.data = os.path.join(base, "data")
        self.maillog = os.path.join(base, "maillog")
        self.tlsproxy = tlsproxy
        self.services = []
        self.running = False
        # A file to see as /etc/resolv.conf, or None for the host's (dns.py).
        self.resolv_conf = None
        self.main = {
            # The level that the build's own main.cf sets, as for a new
            # installation of that release (3.10 on the stable series, 3.12
            # on the development series: there smtp_tls_security_level is
            # "may" by default).  Tests that depend on a default say so.
            "compatibility_level": installed_compatibility_level(self.inst),
            "queue_directory": self.queue,
            "data_directory": self.data,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": name,
            "maillog_file": self.maillog,
            "maillog_file_prefixes": "/var, /dev/stdout, " + base,
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "myhostname": name + ".test",
            "mydomain": "test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relayhost": "",
            "local_transport": "error:local delivery is disabled here",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "smtputf8_enable": "no",
            "smtpd_peername_lookup": "no",
            "smtp_host_lookup": "native",
            # Nothing may leave the machine: unknown destinations bounce.
            "default_transport": "error:no route in this test",
            "relay_transport": "error:no route in this test",
            "message_size_limit": "52428800",
            "mailbox_size_limit": "0",
        }
        os.makedirs(self.conf, exist_ok=True)

    # -- configuration --------------------------------------------------

    def cmd(self, prog):
        return os.path.join(self.inst, "sbin", prog)

    def add_service(self, line):
        self.services.append(line)

    def wrap_daemons(self, wrappers):
        """Run some daemons through wrapper scripts: a daemon directory of
        this instance's own, where every program is a link to the installed
        one except those named in wrappers, {program: script body}, whose
        body is run by /bin/bash with $REAL set to the real program's path.
        The body must end by exec'ing $REAL (the master expects the same
        process).  Calling it again replaces the wrappers it names."""
        real = os.path.join(self.inst, "libexec", "postfix")
        d = os.path.join(self.base, "libexec")
        if not os.path.isdir(d):
            os.makedirs(d)
            for f in os.listdir(real):
                if f not in wrappers:
                    os.symlink(os.path.join(real, f), os.path.join(d, f))
        for prog, body in wrappers.items():
            path = os.path.join(d, prog)
            with open(path + ".new", "w") as f:
                f.write("#!/bin/bash\nREAL=%s\n%s\n"
                        % (os.path.join(real, prog), body))
            os.chmod(path + ".new", 0o755)
            os.rename(path + ".new", path)
        self.main["daemon_directory"] = d

    def write_table(self, name, entries):
        """Write a texthash table and backdate it (fresh tables are 'hot')."""
        path = os.path.join(self.conf, name)
        with open(path, "w") as f:
            for k, v in entries.items():
                f.write("%s\t%s\n" % (k, v))
        past = time.time() - 60
        os.utime(path, (past, past))
        return "texthash:" + path

    def _master_cf(self):
        with open(os.path.join(self.inst, "etc", "postfix", "master.cf")) as f:
            lines = f.read().splitlines()
        out = []
        for line in lines:
            if re.match(r"^smtp\s+inet\s", line):
                line = "#" + line
            elif re.match(r"^#tlsproxy\s+unix\s", line) and self.tlsproxy:
                line = line[1:]
            elif re.match(r"^tlsproxy\s+unix\s", line) and self.tlsproxy is False:
                line = "#" + line
            out.append(line)
        out.append("# services added by the test harness")
        out.extend(self.services)
        return "\n".join(out) + "\n"

    def write_config(self):
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            for k, v in self.main.items():
                f.write("%s = %s\n" % (k, v))
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(self._master_cf())

    def postconf(self, *args):
        return subprocess.run([self.cmd("postconf"), "-c", self.conf] + list(args),
                              check=True, capture_output=True, text=True).stdout

    def set(self, **params):
        """Change main.cf; a running instance is reloaded."""
        self.main.update({k: str(v) for k, v in params.items()})
        self.write_config()
        if self.running:
            self.reload()

    # -- life cycle -----------------------------------------------------

    def _postfix(self, *args, check=True):
        argv = [self.cmd("postfix"), "-c", self.conf] + list(args)
        if self.resolv_conf and args[:1] == ("start",):
            # The master and its children live in a private mount namespace
            # where resolv_conf is mounted over /etc/resolv.conf (dns.py).
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount --bind "$0" /etc/resolv.conf && exec "$@"',
                    self.resolv_conf] + argv
        return subprocess.run(argv, check=check, capture_output=True, text=True)

    def check_output(self):
        """What "postfix check" says (its output and the log lines it
        adds), for a prepared, not necessarily running, instance."""
        out = self._postfix("check", check=False)
        return out.stdout + out.stderr + self.log_tail(50)

    def master_pid(self):
        """The running master's PID: from its pid file, or as remembered
        at start-up (the file may be gone when the directory was removed)."""
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pid = getattr(self, "started_pid", None)
        if pid is None:
            return None
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                if not os.path.basename(f.read().split(b"\0")[0]) == b"master":
                    return None
            return pid
        except OSError:
            return None

    def children(self, process=None):
        """PIDs of the master's children, optionally only those named process."""
        master = self.master_pid()
        found = []
        if master is None:
            return found
        for pid in children_of(master):
            if process:
                try:
                    with open("/proc/%d/cmdline" % pid, "rb") as f:
                        argv0 = f.read().split(b"\0")[0].decode()
                except OSError:
                    continue
                if os.path.basename(argv0) != process:
                    continue
            found.append(pid)
        return found

    def prepare(self):
        """Directories and configuration, as needed before any command."""
        os.makedirs(self.queue, exist_ok=True)
        os.makedirs(self.data, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")
        self.write_config()

    def start(self):
        self.prepare()
        r = self._postfix("start", check=False)
        if r.returncode != 0:
            raise RuntimeError("postfix start failed for %s:\n%s%s\n%s" % (
                self.name, r.stdout, r.stderr, self.log_tail()))
        self.running = True
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.master_pid() and self.children("qmgr") and self.children("pickup"):
                self.started_pid = self.master_pid()
                return
            time.sleep(0.1)
        raise RuntimeError("%s: master, qmgr or pickup did not start\n%s"
                           % (self.name, self.log_tail()))

    def reload(self):
        self.write_config()
        self._postfix("reload")

    def stop(self):
        """Stop this instance; kill its master only if a clean stop fails."""
        if not self.running:
            return
        pid = self.master_pid()
        self._postfix("stop", check=False)
        deadline = time.time() + 15
        while pid and time.time() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)
        else:
            if pid:
                for child in self.children():
                    os.kill(child, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)
        self.running = False

    # -- queue ----------------------------------------------------------

    def flush(self):
        subprocess.run([self.cmd("postqueue"), "-c", self.conf, "-f"], check=True)

    def queued(self):
        """The queue as a list of dicts (postqueue -j)."""
        out = subprocess.run([self.cmd("postqueue"), "-c", self.conf, "-j"],
                             check=True, capture_output=True, text=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    # -- logs -----------------------------------------------------------

    def log_records(self):
        """(ident, pid, text) for every line of the maillog."""
        try:
            with open(self.maillog, errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        recs = []
        for line in lines:
            m = LOG_RE.match(line)
            if m:
                recs.append((m.group(2), int(m.group(3)), m.group(4)))
        return recs

    def log_tail(self, n=30):
        try:
            with open(self.maillog, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except FileNotFoundError:
            return "(no maillog yet)"

    def grep(self, pattern, ident=None):
        rx = re.compile(pattern)
        return [t for (i, _, t) in self.log_records()
                if rx.search(t) and (ident is None or i == ident or i.endswith("/" + ident))]

    def conn_uses(self):
        """The conn_use=N values of delivered mail, sorted (a connection's
        first delivery logs none)."""
        return sorted(int(m) for t in self.grep(r"status=sent")
                      for m in re.findall(r"conn_use=(\d+)", t))

    def wait_log(self, pattern, count=1, timeout=60, ident=None):
        deadline = time.time() + timeout
        while True:
            found = self.grep(pattern, ident)
            if len(found) >= count:
                return found
            if time.time() > deadline:
                raise AssertionError("%s: %d of %d log lines matching %r after %ds\n%s"
                                     % (self.name, len(found), count, pattern,
                                        timeout, self.log_tail()))
            time.sleep(0.2)
