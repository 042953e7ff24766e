"""Test harness: private Postfix instances, a test CA, and SMTP peers.

Everything here runs real programs: Postfix built by scripts/build, openssl,
and Debian's aiosmtpd.  Traffic stays on 127.0.0.0/8.
"""
