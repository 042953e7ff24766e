"""Fuzz the deserializers of the tlsproxy(8) protocols (libFuzzer + ASan).

One libFuzzer target per deserializer entry point (fuzz/*_fuzz.c, see
fuzz/README.md), built by scripts/build-fuzz into build/<base>/fuzz/bin/ with clang,
AddressSanitizer and LeakSanitizer.  For every target:

  - replay: each committed seed (fuzz/corpus/<target>/) and each saved
    regression input (fuzz/regressions/<target>/) runs once and must pass;
  - short fuzz run: FUZZ_TEST_SECONDS (default 20) of fuzzing that starts
    from a copy of the committed corpus in a temporary directory (the
    committed corpus never changes), with the attribute-name dictionary.

A pass means exit status 0 and no AddressSanitizer, LeakSanitizer or
libFuzzer error, and no msg_fatal()/msg_panic() (the targets turn those
into a crash).  A crash input is kept in the test's temporary directory;
its path is in the failure message.  test_seeds_current checks that the
generated seeds are what seedgen writes today (a printer or an attribute
changed: run "scripts/build-fuzz seeds" and commit the result).

The longer run is "make fuzz" (scripts/fuzz-run).
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.base import BASE, BUILD as _BUILD, POSTFIX_VERSION

TOP = Path(__file__).resolve().parents[1]
BUILD = Path(_BUILD)
FUZZ = TOP / "fuzz"
# Seeds that seedgen writes are in the base's own wire format:
# fuzz/gen/<base>/<target>/gen-*; hand-made seeds (fuzz/corpus/) and
# regression inputs serve every base.
GEN = FUZZ / "gen" / BASE
BIN = BUILD / "fuzz" / "bin"
DICT = FUZZ / "tlsproxy.dict"
SECONDS = int(os.environ.get("FUZZ_TEST_SECONDS", "20"))
TARGETS = sorted(p.name[:-len("_fuzz.c")] for p in FUZZ.glob("*_fuzz.c"))

BAD = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)"
                 r"|fuzz: msg_(fatal|panic) reached|SUMMARY: \w+Sanitizer")
ENV = dict(os.environ,
           ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:symbolize=1",
           LC_ALL="C")
ENV.pop("FUZZ_VERBOSE", None)


@pytest.fixture(scope="module")
def built():
    """Build (incrementally) the fuzz targets; fail with the build's tail."""
    r = subprocess.run([str(TOP / "scripts" / "build-fuzz")], cwd=TOP,
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        pytest.fail("scripts/build-fuzz failed:\n" + (r.stdout + r.stderr)[-3000:])
    return BIN


def check_output(target, r, what, extra=""):
    out = r.stdout + r.stderr
    bad = BAD.search(out)
    if r.returncode != 0 or bad:
        pytest.fail(f"{target}: {what}: exit {r.returncode}"
                    f"{', ' + bad.group(0) if bad else ''}{extra}\n"
                    + out[-4000:])
    return out


def test_targets_exist():
    assert len(TARGETS) >= 8, TARGETS
    for t in TARGETS:
        assert (FUZZ / "corpus" / t).is_dir(), f"no seed corpus for {t}"


@pytest.mark.parametrize("target", TARGETS)
def test_replay(built, target):
    """Every committed seed and saved regression input runs clean."""
    inputs = sorted((FUZZ / "corpus" / target).iterdir())
    inputs += sorted((GEN / target).iterdir())
    regressions = FUZZ / "regressions" / target
    if regressions.is_dir():
        inputs += sorted(regressions.iterdir())
    inputs = [str(p) for p in inputs if p.is_file()]
    assert inputs, f"no inputs for {target}"
    r = subprocess.run([str(built / target), "-rss_limit_mb=2048",
                        "-timeout=30"] + inputs,
                       capture_output=True, text=True, timeout=600, env=ENV)
    out = check_output(target, r, "replay")
    assert f"Running {len(inputs)} inputs" in out


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_short(built, target, tmp_path):
    """FUZZ_TEST_SECONDS of fuzzing from a copy of the committed corpus."""
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus" / target, corpus)
    shutil.copytree(GEN / target, corpus, dirs_exist_ok=True)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    cmd = [str(built / target), f"-max_total_time={SECONDS}",
           "-rss_limit_mb=2048", "-timeout=30", "-print_final_stats=1",
           f"-dict={DICT}", f"-artifact_prefix={artifacts}/", str(corpus)]
    r = subprocess.run(cmd, capture_output=True, text=True,
                       timeout=SECONDS + 300, env=ENV, cwd=tmp_path)
    crashes = sorted(str(p) for p in artifacts.iterdir())
    out = check_output(target, r, "fuzzing",
                       f"; inputs saved: {crashes}" if crashes else "")
    assert not crashes, f"{target}: crash inputs {crashes}"
    execs = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
    assert execs and int(execs.group(1)) > 0, out[-2000:]
    print(f"{target}: {execs.group(1)} executions in {SECONDS} s")


def test_seeds_current(built, tmp_path):
    """The committed gen-* seeds are exactly what seedgen writes now."""
    pem = BUILD / "obj" / "fuzz" / "src" / "tls" / "tls_client_policy.pem"
    r = subprocess.run([str(built / "seedgen"), str(tmp_path), str(pem)],
                       capture_output=True, text=True, timeout=120, env=ENV)
    check_output("seedgen", r, "seed generation")
    fresh = {p.relative_to(tmp_path): p.read_bytes()
             for p in tmp_path.glob("*/gen-*")}
    committed = {p.relative_to(GEN): p.read_bytes()
                 for p in GEN.glob("*/gen-*")}
    assert fresh, "seedgen wrote nothing"
    stale = sorted(str(k) for k in fresh.keys() | committed.keys()
                   if fresh.get(k) != committed.get(k))
    assert not stale, ("seeds differ from seedgen output (run "
                       f"'scripts/build-fuzz seeds'): {stale}")


def test_tlsa_out_of_range_is_rejected(built):
    """Regression: tls_proxy_client_tlsa_scan() passed scanned ints to
    tlsa_prepend(), whose fields are 8 and 16 bits wide, so usage=259 became
    DANE-EE and 65537 bytes of data a 1-byte record, and the scan succeeded.
    The fix rejects the record with a warning."""
    # The same record in each base's start-properties format.
    bad = FUZZ / "regressions" / "client_start" / (
        "tlsa-data-65537-bytes" + ("" if POSTFIX_VERSION.startswith("3.10")
                                   else ".3.12"))
    r = subprocess.run([str(built / "client_start"), str(bad)],
                       capture_output=True, text=True, timeout=120,
                       env=dict(ENV, FUZZ_VERBOSE="1"))
    out = check_output("client_start", r, "TLSA regression")
    assert "bad TLSA record: usage=" in out and "length=65537" in out, out[-2000:]
