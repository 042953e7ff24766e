"""A real DNS world for tests: DNSSEC-signed zones under the private TLD
"test.", served on loopback behind a validating resolver.

Zones, all kept in Python, written out as zone files and signed with ldns
(ldns-keygen, ldns-signzone, ldns-key2ds from Debian's ldnsutils), one
ECDSA P-256 key per signed zone:

    test.         the TLD, signed.  The DS of its key is the resolver's
                  only trust anchor.
    dane.test.    signed, delegated with the right DS: answers are secure
                  (the resolver sets the AD bit).
    plain.test.   unsigned, delegated without a DS: provably insecure.
    bogus.test.   signed, but the DS in test. is made from another key:
                  every answer fails validation (the resolver says SERVFAIL).

Servers, Debian's unbound in the foreground, one process each:

    127.0.2.1:53  authoritative: the parent zone test.  Never recurses.
    127.0.2.3:53  authoritative: the child zones.  A separate server, as on
                  the Internet, so that the DS records come from the parent
                  and the rest from the child.  Never recurses.
    127.0.2.2:53  validating resolver: stub-zone test. -> 127.0.2.1,
                  trust-anchor-file from ldns-key2ds.  It refuses every name
                  outside test., so no query ever leaves 127.0.0.0/8.

Changing records during a test: add(), remove() and the helpers host(),
mx() and tlsa() change the records in memory; commit() rewrites and re-signs
the changed zones (new SOA serial), makes the authoritative servers reload
them (unbound-control auth_zone_reload) and, unless flush=False, flushes
test. from the resolver's cache.  With flush=False the resolver keeps
answering from its cache until the old records' TTL (ttl, 2 s by default)
runs out, as on the Internet.

The sender's view: attach(postfix) points a Postfix instance at the
resolver without touching the host's /etc/resolv.conf.  It sets
postfix.resolv_conf to this world's resolv.conf ("nameserver 127.0.2.2",
"options trust-ad"), and Postfix.start() then runs "postfix start" under
"unshare --mount": in a private mount namespace that file is bind-mounted
over /etc/resolv.conf.  The master daemonizes inside that namespace, so
every daemon it starts (smtp, tlsproxy, ...) sees the test resolver.  The
network namespace stays the host's, so the loopback receivers are
reachable, and "postfix stop" and "reload" (signals to the master) work
from outside.  attach() also sets the main.cf parameters that DANE needs:
smtp_dns_support_level = dnssec, smtp_host_lookup = dns, and a DNSSEC probe
that names the test TLD instead of the root.

    dns = dns_world(world)                  # tracked: stopped with the world
    dns.host("mx1.dane.test", "127.0.1.10")
    dns.mx("d1.dane.test", "mx1.dane.test")
    dns.tlsa("mx1.dane.test", tlsa_ee(cert))
    s = world.sender(...); dns.attach(s)
    world.start()                           # signs, serves, resolves
    dns.tlsa("mx1.dane.test", tlsa_ta(world.ca)); dns.commit()
"""

import os
import re
import subprocess
import time

from .proc import stop_process

PARENT_ADDR = "127.0.2.1"
RESOLVER_ADDR = "127.0.2.2"
CHILD_ADDR = "127.0.2.3"

TLD = "test"
SIGNED = "dane.test"
UNSIGNED = "plain.test"
BOGUS = "bogus.test"


def fqdn(name):
    return name.rstrip(".").lower() + "."


def tlsa_ee(cert):
    """DANE-EE(3) SPKI(1) SHA2-256(1) data for a harness Cert."""
    return "3 1 1 " + cert.spki_sha256()


def tlsa_ta(ca):
    """DANE-TA(2) SPKI(1) SHA2-256(1) data for the harness TestCA."""
    return "2 1 1 " + ca.spki_sha256()


def _run(args, cwd=None):
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


class Zone:
    """One zone: its records, its key (if signed) and its files."""

    def __init__(self, directory, origin, ns, signed=True, ttl=2):
        self.origin = origin
        self.ns = ns                 # name server (fqdn) at the apex
        self.dir = directory
        self.signed = signed
        self.ttl = ttl
        self.records = []            # (owner fqdn, ttl, type, rdata)
        self.serial = int(time.time())
        self.dirty = True
        self.path = os.path.join(directory, origin + ".zone")
        self.served = self.path + (".signed" if signed else "")
        self.key = self.keygen() if signed else None

    def keygen(self):
        """A new ECDSA P-256 key with the SEP flag; returns its base path."""
        base = _run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", self.origin],
                    cwd=self.dir).strip()
        return os.path.join(self.dir, base)

    def ds(self, key=None):
        """The DS record text (SHA-256) for this zone's key, or another key."""
        return _run(["ldns-key2ds", "-n", "-2", (key or self.key) + ".key"]).strip()

    def write(self):
        """Write the zone file with a new serial and sign it."""
        self.serial = max(self.serial + 1, int(time.time()))
        apex = fqdn(self.origin)
        lines = ["$ORIGIN " + apex, "$TTL %d" % self.ttl,
                 "@ 60 IN SOA %s hostmaster.%s %d 60 60 600 %d"
                 % (self.ns, apex, self.serial, self.ttl),
                 "@ 60 IN NS " + self.ns]
        lines += ["%s %d IN %s %s" % r for r in self.records]
        with open(self.path, "w") as f:
            f.write("\n".join(lines) + "\n")
        if self.signed:
            now = int(time.time())
            _run(["ldns-signzone", "-i", str(now - 3600), "-e", str(now + 14 * 86400),
                  "-f", self.served, self.path, self.key])
        self.dirty = False


class Unbound:
    """One unbound process in the foreground, with a unix control socket.
    server: extra lines for the server clause; clauses: more clauses."""

    def __init__(self, name, directory, address, server, clauses):
        self.name = name
        self.dir = directory
        self.address = address
        self.conf = os.path.join(directory, name + ".conf")
        self.log = os.path.join(directory, name + ".log")
        self.proc = None
        with open(self.conf, "w") as f:
            f.write("server:\n" + "".join("    %s\n" % line for line in [
                "verbosity: 1",
                "interface: " + address,
                "port: 53",
                # Fail to start if another run holds the address, rather
                # than sharing it (and its queries) with that run.
                "so-reuseport: no",
                "do-ip6: no",
                "do-daemonize: no",
                "use-syslog: no",
                'logfile: "%s"' % self.log,
                'username: ""',
                'chroot: ""',
                'directory: "%s"' % directory,
                'pidfile: "%s"' % os.path.join(directory, name + ".pid"),
                "access-control: 127.0.0.0/8 allow",
                # Answer for test. only; refuse the rest of the DNS.
                'local-zone: "." refuse',
                'local-zone: "%s." transparent' % TLD,
            ] + server) + clauses + "remote-control:\n"
                "    control-enable: yes\n"
                '    control-interface: "%s"\n'
                "    control-use-cert: no\n" % os.path.join(directory, name + ".ctl"))

    def control(self, *args):
        return _run(["unbound-control", "-c", self.conf] + list(args))

    def start(self):
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(["unbound", "-d", "-c", self.conf], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            if subprocess.run(["unbound-control", "-c", self.conf, "status"],
                              capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        with open(self.log, errors="replace") as f:
            raise RuntimeError("unbound %s on %s:53 did not start (is another test "
                               "run using it?):\n%s"
                               % (self.name, self.address, f.read()[-2000:]))

    def stop(self):
        stop_process(self.proc)
        self.proc = None


def _authoritative(name, directory, address, zones):
    """An unbound that serves zones and nothing else."""
    return Unbound(name, directory, address, ['module-config: "iterator"'], "".join(
        'auth-zone:\n    name: "%s."\n    zonefile: "%s"\n    for-downstream: yes\n'
        "    for-upstream: no\n    fallback-enabled: no\n" % (z.origin, z.served)
        for z in zones))


class DNSWorld:
    """The zones, the two authoritative servers and the resolver."""

    name = "dns"

    def __init__(self, directory, ttl=2):
        self.dir = directory
        self.ttl = ttl
        self.running = False
        os.makedirs(directory, exist_ok=True)
        self.parent = Zone(directory, TLD, fqdn("ns." + TLD), ttl=ttl)
        self.children = [Zone(directory, origin, fqdn("ns." + origin), signed=signed,
                              ttl=ttl)
                         for origin, signed in ((SIGNED, True), (UNSIGNED, False),
                                                (BOGUS, True))]
        self.zones = {z.origin: z for z in [self.parent] + self.children}

        # The TLD: its name server, and a delegation with glue to each child.
        self.add("ns." + TLD, "A", PARENT_ADDR, ttl=60)
        for z in self.children:
            self.parent.records += [(fqdn(z.origin), 60, "NS", z.ns),
                                    (z.ns, 60, "A", CHILD_ADDR)]
            self.add(z.ns, "A", CHILD_ADDR, ttl=60)
        # bogus.test's DS names a key that signs nothing: validation fails.
        decoy = self.zones[BOGUS].keygen()
        self.parent.records += [
            (fqdn(SIGNED), 60, "DS", self._ds_rdata(self.zones[SIGNED].ds())),
            (fqdn(BOGUS), 60, "DS", self._ds_rdata(self.zones[BOGUS].ds(decoy)))]

        self.trust_anchor = os.path.join(directory, "test.ds")
        with open(self.trust_anchor, "w") as f:
            f.write(self.parent.ds() + "\n")
        self.resolv_conf = os.path.join(directory, "resolv.conf")
        with open(self.resolv_conf, "w") as f:
            f.write("nameserver %s\noptions trust-ad\n" % RESOLVER_ADDR)

        self.parent_server = _authoritative("parent", directory, PARENT_ADDR,
                                            [self.parent])
        self.child_server = _authoritative("child", directory, CHILD_ADDR, self.children)
        self.resolver = Unbound("resolver", directory, RESOLVER_ADDR, [
            'module-config: "validator iterator"',
            'trust-anchor-file: "%s"' % self.trust_anchor,
            "do-not-query-localhost: no",
            "aggressive-nsec: no",
            "qname-minimisation: no",
            "val-log-level: 2",
            "log-servfail: yes",
        ], 'stub-zone:\n    name: "%s."\n    stub-addr: %s\n' % (TLD, PARENT_ADDR))

    @staticmethod
    def _ds_rdata(ds_line):
        return ds_line.split("\tDS\t", 1)[1]

    # -- records --------------------------------------------------------

    def zone_for(self, name):
        name = fqdn(name)
        best = None
        for origin, z in self.zones.items():
            if name == fqdn(origin) or name.endswith("." + fqdn(origin)):
                if best is None or len(origin) > len(best.origin):
                    best = z
        if best is None:
            raise ValueError("%s is not in any test zone" % name)
        return best

    def add(self, name, rtype, rdata, ttl=None):
        z = self.zone_for(name)
        z.records.append((fqdn(name), ttl or self.ttl, rtype.upper(), rdata))
        z.dirty = True

    def remove(self, name, rtype=None):
        """Remove the records of one name (of one type, if given)."""
        z = self.zone_for(name)
        keep = [r for r in z.records
                if not (r[0] == fqdn(name) and (rtype is None or r[2] == rtype.upper()))]
        if len(keep) != len(z.records):
            z.records = keep
            z.dirty = True

    def host(self, name, address):
        """The A record of a host (replacing any)."""
        self.remove(name, "A")
        self.add(name, "A", address)

    def mx(self, domain, *hosts):
        """The MX RRset of a domain: hosts are names (preferences 10, 20, ...
        in order) or (preference, name) pairs."""
        self.remove(domain, "MX")
        for i, h in enumerate(hosts):
            pref, host = h if isinstance(h, tuple) else (10 * (i + 1), h)
            self.add(domain, "MX", "%d %s" % (pref, fqdn(host)))

    def tlsa(self, host, *rdatas, port=25):
        """The TLSA RRset of host:port (replacing any; none removes it)."""
        name = "_%d._tcp.%s" % (port, host)
        self.remove(name, "TLSA")
        for rdata in rdatas:
            self.add(name, "TLSA", rdata)

    def commit(self, flush=True):
        """Re-sign changed zones and serve them; flush the resolver's cache
        unless flush is false (then old answers live until their TTL)."""
        changed = [z for z in self.zones.values() if z.dirty]
        for z in changed:
            z.write()
        if not self.running:
            return
        for z in changed:
            server = self.parent_server if z is self.parent else self.child_server
            server.control("auth_zone_reload", fqdn(z.origin))
        if flush:
            self.resolver.control("flush_zone", fqdn(TLD))
            self.resolver.control("flush_bogus")
            self.resolver.control("flush_negative")

    # -- life cycle -----------------------------------------------------

    def start(self):
        self.commit()
        try:
            for server in (self.parent_server, self.child_server, self.resolver):
                server.start()
        except Exception:
            self.stop()
            raise
        self.running = True

    def stop(self):
        for server in (self.resolver, self.child_server, self.parent_server):
            server.stop()
        self.running = False

    # -- clients --------------------------------------------------------

    def attach(self, postfix):
        """Make a Postfix instance resolve through this world (see above)."""
        postfix.resolv_conf = self.resolv_conf
        postfix.main.update({
            "smtp_dns_support_level": "dnssec",
            "smtp_host_lookup": "dns",
            "dnssec_probe": "ns:%s." % TLD,
        })

    def query(self, name, rtype="A"):
        """Ask the resolver with drill: (rcode, AD bit set, [answer rdata])."""
        out = subprocess.run(["drill", "-D", "@" + RESOLVER_ADDR, fqdn(name), rtype],
                             capture_output=True, text=True, timeout=20).stdout
        m = re.search(r"rcode: (\w+)", out)
        flags = re.search(r";; flags: ([^;]*);", out)
        answers = []
        section = None
        for line in out.splitlines():
            if line.startswith(";; ANSWER SECTION"):
                section = "answer"
            elif line.startswith(";;"):
                section = None if line.startswith(";; AUTHORITY") else section
            elif section == "answer" and line.strip():
                f = line.split(None, 4)
                if len(f) == 5 and f[3] == rtype.upper():
                    answers.append(f[4])
        return (m.group(1) if m else "NO-ANSWER",
                bool(flags and "ad" in flags.group(1).split()), answers)


def dns_world(world, **kw):
    """A DNSWorld in world.dir/dns, started and stopped with the world."""
    d = DNSWorld(os.path.join(world.dir, "dns"), **kw)
    world.things.append(d)
    return d
