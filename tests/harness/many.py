"""Thousands of receiver addresses served by one process.

    rcv = ManyReceiver(world)                     # wildcard 0.0.0.0:25
    rcv = ManyReceiver(world, addresses=[...])    # one listener per address
    world.things.append(rcv); rcv.start()

runs manyreceiver.py (aiosmtpd with STARTTLS, one process, no message
storage) and reads its JSON event log: connections, TLS handshakes and
messages, each with the local address that the client connected to.
The wildcard form belongs in a private network namespace only (bench W6
makes one); tests name their addresses.
"""

import json
import os
import subprocess
import time

from .proc import stop_process

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"


def address(i, net=1):
    """The i-th receiver address: 127.<net>.<1 + i // 250>.<1 + i % 250>
    (250 per /24, up to 62500 per net)."""
    return "127.%d.%d.%d" % (net + i // 62500, (i // 250) % 250 + 1, i % 250 + 1)


class ManyReceiver:
    def __init__(self, w, name="many", addresses=None):
        self.name = name
        self.base = os.path.join(w.dir, name)
        os.makedirs(self.base, exist_ok=True)
        self.events = os.path.join(self.base, "events.jsonl")
        self.logfile = os.path.join(self.base, "manyreceiver.log")
        self.cert = w.cert("mx-many")
        self.addresses = addresses
        self.proc = None
        self.pos = 0
        self.evs = []

    def start(self):
        argv = [PYTHON, os.path.join(HERE, "manyreceiver.py"), "--chain",
                self.cert.chain, "--events", self.events]
        if self.addresses:
            path = os.path.join(self.base, "addresses")
            with open(path, "w") as f:
                f.write("\n".join(self.addresses) + "\n")
            argv += ["--addresses", path]
        else:
            argv += ["--listen", "0.0.0.0:25"]
        log = open(self.logfile, "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            if any(e["ev"] == "ready" for e in self.read()):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("manyreceiver did not start:\n" + self.log_tail())

    def stop(self):
        stop_process(self.proc)
        self.proc = None

    def read(self):
        """All events so far (read incrementally)."""
        try:
            with open(self.events, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return self.evs
        end = data.rfind(b"\n") + 1
        self.pos += end
        self.evs.extend(json.loads(x) for x in data[:end].decode().splitlines()
                        if x.strip())
        return self.evs

    def open_connections(self):
        ev = self.read()
        return (sum(1 for e in ev if e["ev"] == "connect")
                - sum(1 for e in ev if e["ev"] == "close"))

    def messages(self):
        return [e for e in self.read() if e["ev"] == "message"]

    def log_tail(self):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()[-3000:]
        except FileNotFoundError:
            return ""
