"""Upstream Postfix's own unit tests, run against a built tree.

What runs: for src/util, src/global, src/tls and src/smtp, every test target
that upstream's "tests:" make target pulls in.  Pure aggregates such as
util's dict_tests or global's mime_tests are expanded, so each real test is
its own pytest case: one `make <target>` per case.  Two standalone util
targets that upstream left out of "tests:" but that work (hash_fnv_test,
sane_basename_test) run too.  src/tlsproxy (and src/scache) have no unit
tests upstream: their "tests:" target builds nothing and runs nothing, so
they contribute no cases.

Where it runs: the built tree is build/<base>/obj/$UNIT_FLAVOUR ("units" unless
set; UNIT_TREE=/some/dir overrides the whole path).  build/<base>/obj/units is the
patched work tree built for these tests only ("make build-units", part of
"make check"): the same settings as the installed build plus PCRE
(-DHAS_PCRE=2, libpcre2-dev) and ICU (EAI, libicu-dev), which the installed
builds leave out (-DNO_EAI, as Debian's own build does not), so that the
PCRE map and Unicode case-folding tests run instead of being skipped.  The
cost: one more build of the tree (measured: 49 s wall, 31 s user CPU with
make -j2, then incremental), no install; the 9 tests add about 5 s.  UNIT_FLAVOUR=patched runs the tests against
the installed build, where those tests are skipped.  The tests compile test
programs and write scratch files into the source directories, so the tree
is first copied (cp -a, timestamps kept, nothing is rebuilt) to a private
temporary directory and make runs there; the built tree stays untouched.
When pytest runs as root the copy is handed to the "nobody" user and make
runs as nobody, because several map tests expect map files owned by a
non-root user (root-owned maps are reported as "trusted").  make gets a
clean environment: C.UTF-8 locale, and MAIL_CONFIG pointing at an empty
main.cf, which the global tests that read main.cf need.

Excluded (reported as skips with the reason; see EXCLUDED below):
  - tests that resolve porcupine.org names via live DNS (no network here);
  - unescape_test, whose expected output is BSD od(1)'s, not GNU od's;
  - on 3.12-20260821, the tests whose upstream link rule fails with
    static libraries (stock fails them the same way);
  - PCRE map tests and Unicode case-folding tests, only when the tree
    has no PCRE support (no -DHAS_PCRE) or no ICU (-DNO_EAI): never with
    build/<base>/obj/units.
htable_test and binhash_test read /usr/share/dict/words (Debian package
wamerican) and are skipped when it is missing.

Not run at all: upstream's root_tests (rewrite_clnt_test and friends need a
running Postfix), and standalone targets outside "tests:" that are broken
upstream (util's dict_seq_test passes an unknown "sync" flag, find_inet_test
crashes at exit) or need things this build lacks (myaddrinfo4_test: DNS;
global's surrogate_test: LDAP/MySQL/PgSQL/SQLite maps).
"""

import os
import pwd
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness.base import OBJ, POSTFIX_VERSION, make_hint

TREE = Path(os.environ.get("UNIT_TREE")
            or Path(OBJ) / os.environ.get("UNIT_FLAVOUR", "units"))

DIRS = ["util", "global", "tls", "smtp", "tlsproxy"]

# Standalone *_test targets that upstream's "tests:" leaves out but that pass.
EXTRA_TARGETS = {"util": ["hash_fnv_test", "sane_basename_test"]}

DNS = "needs live DNS for porcupine.org names; this machine has no network"
PCRE = "needs PCRE maps; this build has no PCRE (no -DHAS_PCRE)"
EAI = "needs ICU Unicode case folding; this build has none (-DNO_EAI)"
BSD_OD = "expected output is BSD od(1)'s (UTF-8 as characters); GNU od prints octal"
STATIC_LINK = ("upstream 3.12-20260821's link rule for this test fails with static "
               "libraries (shared=no: undefined or duplicate symbols), in stock "
               "3.12-20260821 as in the series")

EXCLUDED = {
    ("util", "myaddrinfo_test"): DNS,
    ("util", "unescape_test"): BSD_OD,
    ("util", "dict_pcre_test"): PCRE,
    ("util", "miss_endif_pcre_test"): PCRE,
    ("util", "dict_pcre_file_test"): PCRE,
    ("util", "dict_inline_pcre_test"): PCRE,
    ("util", "surrogate_test"): PCRE,
    ("util", "midna_domain_test"): EAI,
    ("util", "casefold_test"): EAI,
    ("util", "strcasecmp_utf8_test"): EAI,
    ("global", "fold_addr_test"): EAI,
    ("smtp", "test_smtp_reqtls_policy"): EAI,   # 3.12: U-label queries
}

# Tests of the development base that upstream cannot link with static
# libraries (checked against the stock build of the same snapshot).
if POSTFIX_VERSION == "3.12-20260821":
    EXCLUDED.update({
        ("util", "test_hash_fnv"): STATIC_LINK,
        ("util", "hash_fnv_test"): STATIC_LINK,
        ("util", "test_allprint"): STATIC_LINK,
        ("global", "test_nbdb_util"): STATIC_LINK,
        ("global", "test_nbdb_redirect"): STATIC_LINK,
        ("global", "test_nbdb_surrogate"): STATIC_LINK,
        ("tls", "test_tls_proxy_client_param_proto"): STATIC_LINK,
        ("tls", "tls_certkey_tests"): STATIC_LINK + " (it first builds every "
        "test program, that one included)",
    })

# Feature exclusions apply only while the build lacks the feature.
FEATURE_MISSING = {
    PCRE: lambda cc: "-DHAS_PCRE" not in cc,
    EAI: lambda cc: "-DNO_EAI" in cc,
}

WORDS = Path("/usr/share/dict/words")
NEEDS_WORDS = {("util", "htable_test"), ("util", "binhash_test")}


def make_rules(makefile):
    """Map each rule target to (prerequisites, has_recipe)."""
    rules, current = {}, None
    for line in makefile.read_text(errors="replace").replace("\\\n", " ").splitlines():
        if line.startswith("\t"):
            if current:
                rules[current] = (rules[current][0], True)
            continue
        m = re.match(r"([\w.-]+)\s*:(?!=)([^;]*)(;?)", line)
        current = m and m.group(1)
        if m:
            rules[current] = (m.group(2).split(), bool(m.group(3)))
    return rules


def unit_targets(directory):
    """Leaf test targets reachable from "tests:", plus the extras."""
    rules = make_rules(TREE / "src" / directory / "Makefile")
    found, todo = [], list(rules.get("tests", ([], False))[0])
    while todo:
        target = todo.pop(0)
        if target in ("all", "update") or target not in rules or target in found:
            continue
        prereqs, has_recipe = rules[target]
        if has_recipe:
            found.append(target)
        else:
            todo = prereqs + todo
    return found + EXTRA_TARGETS.get(directory, [])


def cases():
    for directory in DIRS:
        if not (TREE / "src" / directory / "Makefile").exists():
            yield pytest.param(directory, None, id=f"{directory}-missing-tree")
            continue
        for target in unit_targets(directory):
            yield pytest.param(directory, target, id=f"{directory}-{target}")


def exclusion(directory, target):
    reason = EXCLUDED.get((directory, target))
    if reason in FEATURE_MISSING:
        cc = (TREE / "Makefile").read_text(errors="replace")
        cc = re.search(r"^CC\s*=(.*)$", cc, re.M).group(1)
        if not FEATURE_MISSING[reason](cc):
            return None
    if reason is None and (directory, target) in NEEDS_WORDS and not WORDS.exists():
        return f"needs {WORDS} (Debian package wamerican)"
    return reason


@pytest.fixture(scope="session")
def work_tree():
    """A private copy of the tree, owned by whoever runs make.

    Not tmp_path: pytest's base temp dir is mode 0700, which "nobody"
    cannot enter.
    """
    user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory(prefix="postfix-units-") as tmp:
        copy = Path(tmp) / "tree"
        subprocess.run(["cp", "-a", str(TREE), str(copy)], check=True)
        config = Path(tmp) / "mail_config"
        config.mkdir()
        (config / "main.cf").write_text("")
        if user:
            subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", tmp],
                           check=True)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp,
               "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "MAIL_CONFIG": str(config)}
        yield copy, env, user


@pytest.mark.parametrize("directory, target", cases())
def test_upstream_unit(request, directory, target):
    assert target is not None, f"no built tree at {TREE}: run '{make_hint('build-units')}'"
    reason = exclusion(directory, target)
    if reason:
        pytest.skip(f"{directory}/{target}: {reason}")
    copy, env, user = request.getfixturevalue("work_tree")
    ids = dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[]) if user else {}
    # tls_dane_tests runs openssl a few hundred times: on a loaded 2-core
    # machine (make check-series beside a benchmark) it took over 300 s.
    proc = subprocess.run(["make", "-C", str(copy / "src" / directory), target],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", timeout=900, **ids)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-60:])
        pytest.fail(f"make {target} exited {proc.returncode}; output tail:\n{tail}",
                    pytrace=False)
