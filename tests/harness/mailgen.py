"""Test messages, as bytes with CRLF line ends, and how to compare them."""

import base64
import hashlib
import os
import uuid


def _msgid(tag):
    return "<%s.%s@sender.test>" % (tag, uuid.uuid4().hex[:16])


def simple(rcpt, tag, i):
    msgid = _msgid(tag)
    data = ("From: tester@sender.test\r\nTo: %s\r\nSubject: %s message %d\r\n"
            "Message-ID: %s\r\n\r\nTest message %d.\r\n" % (rcpt, tag, i, msgid, i))
    return msgid, data.encode()


def _wrap(headers, body):
    return b"\r\n".join(h.encode() for h in headers) + b"\r\n\r\n" + body


def integrity_set(rcpt, tag):
    """Messages that stress the content path: (name, msgid, bytes)."""
    out = []

    def hdrs(subject, msgid, extra=()):
        return ["From: tester@sender.test", "To: " + rcpt, "Subject: " + subject,
                "Message-ID: " + msgid, "MIME-Version: 1.0"] + list(extra)

    # Lines of exactly 998 octets (the SMTP limit without CRLF) and near it.
    msgid = _msgid(tag)
    lines = [(b"L%03d-" % i) + b"x" * (998 - 5) for i in range(50)]
    lines += [b"y" * n for n in (997, 996, 500, 1)]
    out.append(("long-lines", msgid, _wrap(hdrs("long lines", msgid), b"\r\n".join(lines) + b"\r\n")))

    # 8-bit UTF-8 text declared as 8bit.
    msgid = _msgid(tag)
    text = ("Grüße aus Köln. Ελληνικά. 日本語のテキスト. ÆØÅ æøå.\r\n" * 40).encode("utf-8")
    text += bytes(range(0x80, 0x100)) + b"\r\n"
    out.append(("8bit", msgid, _wrap(hdrs("8-bit text", msgid, [
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit"]), text)))

    # Lines that start with dots (SMTP dot-stuffing).
    msgid = _msgid(tag)
    body = b"\r\n".join([b".", b"..", b"...", b".hidden", b". space", b"x", b".",
                         b"..end"]) + b"\r\n"
    out.append(("dots", msgid, _wrap(hdrs("leading dots", msgid), body)))

    # A 5 MB binary attachment, base64.
    msgid = _msgid(tag)
    blob = os.urandom(5 * 1024 * 1024)
    b64 = base64.encodebytes(blob).replace(b"\n", b"\r\n")
    body = (b"--b0undary\r\nContent-Type: text/plain\r\n\r\nSee attachment.\r\n"
            b"--b0undary\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=blob.bin\r\n\r\n"
            + b64 + b"--b0undary--\r\n")
    out.append(("5MB-attachment", msgid, _wrap(hdrs("attachment", msgid, [
        'Content-Type: multipart/mixed; boundary="b0undary"']), body)))
    return out


def split(data):
    """(headers, body) of a message, line ends normalized to LF."""
    data = data.replace(b"\r\n", b"\n")
    head, sep, body = data.partition(b"\n\n")
    return head, body


def body_sha256(data):
    return hashlib.sha256(split(data)[1]).hexdigest()


def header(data, name):
    for line in split(data)[0].split(b"\n"):
        if line.lower().startswith(name.lower().encode() + b":"):
            return line.split(b":", 1)[1].strip().decode()
    return None
