"""A test world: one directory, one test CA, a sender and its receivers.

    with World("test_name") as w:           # build/<base>/run/test_name/, cleaned first
        r = w.postfix_receiver("r1", ["127.0.0.10"], store=True)
        s = w.sender(routes={"d1.test": "[127.0.0.10]:25"}, reuse=True)
        w.start()
        w.send(s, "user@d1.test", n=3, spacing=3)

Everything a World starts is stopped when the with-block ends, pass or fail.
Files stay for post-mortem reading in a short directory under $PFX_RUN_ROOT
(default /tmp/pfx-run: Postfix commands use UNIX-domain socket paths below
the queue directory, limited to about 100 bytes), linked from
build/<base>/run/<name> (harness/base.py).
"""

import hashlib
import os
import shutil
import smtplib
import socket
import time

from .base import BASE, RUN
from .pki import TestCA
from .postfix import Postfix
from .receivers import PostfixReceiver, AioReceiver
from . import mailgen

SHORT_ROOT = os.environ.get("PFX_RUN_ROOT", "/tmp/pfx-run")


def short_dir(name):
    """A short directory for a world's files, unique per test name and base
    (the same test of the two series never shares one)."""
    digest = hashlib.sha1(("%s/%s" % (BASE, name)).encode()).hexdigest()[:8]
    return os.path.join(SHORT_ROOT, "%s-%s" % (name[:24].rstrip("-_"), digest))


def free_port(address="127.0.0.1"):
    """A TCP port that is free now (for a listener that Postfix will open)."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


class World:
    def __init__(self, name, flavour="patched"):
        self.name = name
        self.flavour = flavour
        self.dir = short_dir(name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        link = os.path.join(RUN, name)
        os.makedirs(RUN, exist_ok=True)
        if os.path.islink(link) or os.path.exists(link):
            if os.path.isdir(link) and not os.path.islink(link):
                shutil.rmtree(link)
            else:
                os.unlink(link)
        os.symlink(self.dir, link)
        self.ca = TestCA(os.path.join(self.dir, "pki"))
        self.things = []
        self._certs = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        for t in reversed(self.things):
            try:
                t.stop()
            except Exception as e:          # keep stopping the others
                print("stopping %s: %s" % (getattr(t, "name", t), e))

    def cert(self, name, dns_names=None):
        if name not in self._certs:
            self._certs[name] = self.ca.issue(name, dns_names or [name + ".test"])
        return self._certs[name]

    def start(self):
        for t in self.things:
            if not getattr(t, "running", False) and getattr(t, "proc", None) is None:
                t.start()

    # -- peers ----------------------------------------------------------

    def postfix_receiver(self, name, addresses, cert=None, store=False,
                         flavour="stock", **tls):
        r = PostfixReceiver(name, os.path.join(self.dir, name), addresses,
                            cert or self.cert("mx-" + name), store=store,
                            flavour=flavour, **tls)
        self.things.append(r)
        return r

    def aio_receiver(self, name, address, cert=None, **kw):
        r = AioReceiver(name, os.path.join(self.dir, name), address,
                        cert or self.cert("mx-" + name), **kw)
        self.things.append(r)
        return r

    def sender(self, routes, reuse=False, level="encrypt", flavour=None,
               tlsproxy=True, cache_time=30, name="sender", tuned=True, **main):
        """A Postfix sender that routes each domain to its nexthop.

        routes: {"d1.test": "[127.0.0.10]:25", ...}.  When tuned, connections
        to those nexthop hosts are always cached (spaced mail is reusable), and
        the cache time and scache's TTL cap are raised to cache_time; with
        tuned=False the connection cache settings are Postfix's defaults."""
        s = Postfix(name, os.path.join(self.dir, name), flavour=flavour or self.flavour,
                    tlsproxy=tlsproxy)
        s.inject_port = free_port()
        s.add_service("127.0.0.1:%d inet n - n - - smtpd -o syslog_name=%s/inject "
                      "-o smtpd_tls_security_level=none" % (s.inject_port, name))
        hosts = sorted({n.split("]")[0].lstrip("[") for n in routes.values()})
        s.main.update({
            "transport_maps": s.write_table("transport", {
                d: "smtp:" + n for d, n in routes.items()}),
            "smtp_tls_security_level": level,
            "smtp_tls_CAfile": self.ca.cert,
            "smtp_tls_loglevel": "1",
            "smtp_tls_connection_reuse": "yes" if reuse else "no",
        })
        if tuned:
            s.main.update({
                "smtp_connection_cache_destinations": " ".join(hosts),
                "smtp_connection_cache_time_limit": "%ds" % cache_time,
                "connection_cache_ttl_limit": "%ds" % cache_time,
            })
        s.main.update({k: str(v) for k, v in main.items()})
        self.things.append(s)
        return s

    # -- mail -----------------------------------------------------------

    def send(self, sender, rcpt, n=1, spacing=0, message=None, tag=None):
        """Inject n messages over SMTP, spacing seconds apart.  Returns the
        Message-IDs."""
        ids = []
        for i in range(n):
            if i and spacing:
                time.sleep(spacing)
            msgid, data = message(i) if message else mailgen.simple(
                rcpt, tag or self.name, i)
            with smtplib.SMTP("127.0.0.1", sender.inject_port, timeout=60) as smtp:
                smtp.sendmail("tester@sender.test", [rcpt], data,
                              mail_options=["BODY=8BITMIME"])
            ids.append(msgid)
        return ids


def wait_for(predicate, timeout=60, what="condition", interval=0.2):
    deadline = time.time() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError("timed out after %ds waiting for %s" % (timeout, what))
        time.sleep(interval)
