"""A TCP relay between a sender and a real receiver that injects faults.

The relay listens on a loopback address and forwards every connection to the
receiver's address, byte for byte: TLS stays end to end between Postfix's
tlsproxy and the receiver's smtpd, so faults are what the network or a
misbehaving server would do, seen at the TCP level:

    reset_up_after = n     a new connection is reset (RST, both sides) once
                           the client has sent more than n bytes
    stall_up_after = n     a new connection stops forwarding anything, both
                           ways, once the client has sent more than n bytes
    mute_down_after = n    a new connection stops forwarding the server's
                           bytes once the client has sent more than n bytes
                           (the server's reply to end of data is lost)
    stall_after_starttls   a new connection stops forwarding once the
                           server has answered STARTTLS (handshake stall)
    up_rate = bytes/s      throttle the client's bytes (slow DATA)
    starttls_reply = "454 ..."  STARTTLS is not forwarded: the relay answers
                           it with this reply, and the session goes on in
                           plaintext (a server whose TLS is broken)
    break_handshake = "close" | "garbage"  the server's 220 reply to
                           STARTTLS is forwarded, and the client's first TLS
                           bytes end the connection: closed at once, or
                           answered with bytes that are not TLS first

A fault applies to connections made while it is set (and, with times=k, to
the next k connections only).  close_all() and reset_all() end every open
connection now (as a server that closes idle connections, or crashes).
arm(action) makes every open connection end as soon as the client sends
its next bytes, which are dropped: action "close" or "reset", or "421",
which first answers with a 421 reply, as a server that is shutting down,
or "451", which first answers "451 4.7.0 Timeout waiting for client input"
as Exchange does at its idle timeout (421 and 451 are meaningful for
plaintext connections only).  This is the race in which a server closes a
cached connection just after the client checked it.  Action "mute" drops
the client's next bytes and everything after, answers nothing and keeps
the connection open: a server that hangs, or a NAT or firewall that
dropped the flow without a reset.
Counts: connections, and per connection bytes up/down and how it ended.
"""

import select
import socket
import struct
import threading
import time


class Conn:
    def __init__(self, n, client, server, faults):
        self.n = n
        self.client, self.server = client, server
        self.faults = faults
        self.up = self.down = 0
        self.stalled = False
        self.muted = False
        self.ended = None
        self.opened = time.time()
        self.closed = None
        self.plain = b""            # client bytes before STARTTLS
        self.armed = None           # end at the next client bytes: how
        self.dropped = 0            # client bytes dropped when armed
        self.starttls = False       # client sent STARTTLS
        self.tls_started = None     # False: STARTTLS sent, no TLS bytes yet
        self.lock = threading.Lock()

    def _kill(self, how):
        with self.lock:
            if self.ended:
                return
            self.ended = how
            self.closed = time.time()
            for s in (self.client, self.server):
                try:
                    if how == "reset":
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
                    else:
                        s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass

    def run(self):
        f = self.faults
        socks = [self.client, self.server]
        try:
            while not self.ended:
                try:
                    r, _, _ = select.select(socks, [], [], 0.1)
                except (OSError, ValueError):
                    break
                for s in r:
                    if self.stalled:
                        time.sleep(0.05)
                        continue
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._kill("closed")
                        break
                    if s is self.client:
                        self._client_bytes(data, f)
                    else:
                        self._server_bytes(data, f)
                    if self.ended:
                        break
        finally:
            self._kill(self.ended or "closed")

    def _client_bytes(self, data, f):
        if self.armed:
            self.dropped += len(data)
            if self.armed == "mute":
                return
            reply = {"421": b"421 4.3.2 Service shutting down, "
                            b"closing transmission channel\r\n",
                     "451": b"451 4.7.0 Timeout waiting for client input\r\n"}
            if self.armed in reply:
                try:
                    self.client.sendall(reply[self.armed])
                except OSError:
                    pass
            self._kill("reset" if self.armed == "reset" else "closed")
            return
        if self.starttls and self.tls_started is False:
            self.tls_started = True
            if f.get("break_handshake"):
                if f["break_handshake"] == "garbage":
                    try:
                        self.client.sendall(b"this is not a TLS record\r\n")
                    except OSError:
                        pass
                self._kill("closed")
                return
        if not self.starttls:
            self.plain += data
            self.starttls = b"STARTTLS\r\n" in self.plain.upper()
            if self.starttls and f.get("starttls_reply"):
                # STARTTLS is the last command of its group: answer it
                # here, and let the session go on in plaintext.
                self.client.sendall(f["starttls_reply"].encode() + b"\r\n")
                self.plain, self.starttls = b"", False
                return
            if self.starttls:
                self.tls_started = False
        if f.get("up_rate"):
            time.sleep(len(data) / f["up_rate"])
        self.up += len(data)
        if f.get("reset_up_after") is not None and self.up > f["reset_up_after"]:
            self._kill("reset")
            return
        if f.get("stall_up_after") is not None and self.up > f["stall_up_after"]:
            self.stalled = True
            return
        if f.get("mute_down_after") is not None and self.up > f["mute_down_after"]:
            self.muted = True
        self.server.sendall(data)

    def _server_bytes(self, data, f):
        self.down += len(data)
        if self.muted:
            return
        if (f.get("stall_after_starttls") and self.starttls
                and data.startswith(b"220")):
            self.client.sendall(data)
            self.stalled = True
            return
        self.client.sendall(data)


class FaultProxy:
    def __init__(self, address, port, target, target_port=25):
        self.address, self.port = address, port
        self.target = (target, target_port)
        self.conns = []
        self.faults = {}
        self.times = None
        self.lock = threading.Lock()
        self.sock = None
        self.running = False

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.address, self.port))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self.running = False
        self.reset_all()
        if self.sock:
            self.sock.close()

    def set(self, times=None, **faults):
        """Faults for the next connections (times=None: until cleared)."""
        with self.lock:
            self.faults = dict(faults)
            self.times = times

    def clear(self):
        self.set()

    def _accept(self):
        while self.running:
            try:
                client, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            client.settimeout(None)
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                faults = dict(self.faults)
                if self.times is not None:
                    self.times -= 1
                    if self.times <= 0:
                        self.faults, self.times = {}, None
                c = Conn(len(self.conns) + 1, client, server, faults)
                self.conns.append(c)
            threading.Thread(target=c.run, daemon=True).start()

    def open_conns(self):
        return [c for c in self.conns if not c.ended]

    def close_all(self):
        for c in self.open_conns():
            c._kill("closed")

    def arm(self, action):
        """End every open connection at the client's next bytes."""
        assert action in ("close", "reset", "421", "451", "mute")
        for c in self.open_conns():
            c.armed = action

    def reset_all(self):
        for c in self.open_conns():
            c._kill("reset")

    def unstall(self):
        """Give up on stalled connections (as the peer finally would)."""
        for c in self.open_conns():
            if c.stalled or c.muted:
                c._kill("closed")
