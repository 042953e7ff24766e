"""The series under test: which upstream base, and where its builds are.

The project holds one patch series per upstream base, patches/<base>/
(series, the DEP-3 patches, base.conf).  BASE in the environment selects
one, as for the scripts and the Makefile (which exports it); unset: the
contents of patches/default-base, the development series.

    BASE             "3.12-20260821", "3.10.13", ...
    PATCHES          TOP/patches/BASE
    BUILD            TOP/build/BASE: download/, obj/, inst/, run/, fuzz/,
                     deb/, chroot/ ... of this base
    INST, OBJ, RUN   BUILD/inst, BUILD/obj, BUILD/run
    POSTFIX_VERSION  from patches/BASE/base.conf
    WORKTREE         TOP/build/postfix-POSTFIX_VERSION (scripts/tree)
    make_hint(t)     "make t BASE=..." for messages

Importing this module also puts BASE into os.environ (when it came from
patches/default-base), so that the scripts that a test runs work on the
same series.
"""

import os

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _first_line(path):
    with open(path) as f:
        return f.read().strip()


def bases():
    """The series in patches/, sorted."""
    d = os.path.join(TOP, "patches")
    return sorted(b for b in os.listdir(d)
                  if os.path.isfile(os.path.join(d, b, "base.conf")))


def read_conf(path):
    """KEY=VALUE lines of a base.conf (comments and blank lines skipped)."""
    conf = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            k, v = line.split("=", 1)
            conf[k.strip()] = v.strip().strip("'\"")
    return conf


DEFAULT_BASE = _first_line(os.path.join(TOP, "patches", "default-base"))
STABLE_BASE = _first_line(os.path.join(TOP, "patches", "stable-base"))
BASE = os.environ.get("BASE") or DEFAULT_BASE
PATCHES = os.path.join(TOP, "patches", BASE)
if "/" in BASE or not os.path.isfile(os.path.join(PATCHES, "base.conf")):
    raise RuntimeError("no series for BASE=%s (no patches/%s/base.conf); the bases are: %s"
                       % (BASE, BASE, " ".join(bases())))
os.environ["BASE"] = BASE

CONF = read_conf(os.path.join(PATCHES, "base.conf"))
POSTFIX_VERSION = CONF["POSTFIX_VERSION"]
BUILD = os.path.join(TOP, "build", BASE)
INST = os.path.join(BUILD, "inst")
OBJ = os.path.join(BUILD, "obj")
RUN = os.path.join(BUILD, "run")
WORKTREE = os.path.join(TOP, "build", "postfix-" + POSTFIX_VERSION)


def make_hint(target):
    """The make command that builds TARGET for this base, for messages."""
    return "make %s BASE=%s" % (target, BASE)
