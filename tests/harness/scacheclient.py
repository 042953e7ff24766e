"""A client of a Postfix instance's scache(8), as smtp(8) talks to it.

The test can take a cached connection out of the cache (find_endp), look at
the properties that smtp(8) saved with it, and put a connection back with
properties of its choice (save_endp): for example properties that an older
or newer build could have written.  The protocol is scache_clnt(3)'s: attr0
lists over the UNIX-domain socket private/<service>, and the connection
itself passed as a file descriptor (on Linux, with a dummy list before the
descriptor and one after it).

Endpoint labels contain newlines; Postfix logs them with '?' instead
(msg_output printable()), so label_from_log() turns those back.
"""

import os
import socket


def label_from_log(text):
    return text.replace("?", "\n")


class ScacheClient:
    def __init__(self, queue_directory, service="scache", timeout=10):
        self.path = os.path.join(queue_directory, "private", service)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(self.path)
        proto = self._read_list()
        if proto.get("protocol") != "connection_cache_protocol":
            raise RuntimeError("%s: unexpected announcement %r" % (self.path, proto))

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- attr0 ---------------------------------------------------------

    def _read_str(self):
        buf = bytearray()
        while True:
            b = self.sock.recv(1)
            if not b:
                raise EOFError(self.path)
            if b == b"\0":
                return buf.decode("latin-1")
            buf += b

    def _read_list(self):
        out = {}
        while True:
            name = self._read_str()
            if name == "":
                return out
            out[name] = self._read_str()

    def _write_list(self, *pairs):
        data = b""
        for name, value in pairs:
            data += name.encode() + b"\0" + str(value).encode("latin-1") + b"\0"
        self.sock.sendall(data + b"\0")

    # -- requests ------------------------------------------------------

    def find_endp(self, label):
        """(fd, properties) of a connection cached under label, or None."""
        self._write_list(("request", "find_endp"), ("label", label))
        reply = self._read_list()
        if int(reply["status"]) != 0:
            return None
        self._write_list(("dummy", ""))
        _, fds, _, _ = socket.recv_fds(self.sock, 1, 1)
        self._write_list(("dummy", ""))
        if not fds:
            raise RuntimeError("%s: no descriptor received" % self.path)
        return fds[0], reply["property"]

    def save_endp(self, ttl, label, prop, fd):
        """Hand a connection to the cache; fd is closed here either way."""
        try:
            self._write_list(("request", "save_endp"), ("ttl", ttl),
                             ("label", label), ("property", prop))
            self._read_list()                   # dummy
            socket.send_fds(self.sock, [b"\0"], [fd])
            reply = self._read_list()
            return int(reply["status"]) == 0
        finally:
            os.close(fd)
