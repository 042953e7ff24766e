# Postfix TLS connection reuse patch series: build, test, demo.
#
# Two series, one per upstream base, each in patches/<base>/ (series, the
# DEP-3 patches, base.conf: version, tarball, checksum):
#   3.12-20260821  the development series (patches/default-base): Postfix
#                  3.12-20260821, a development snapshot; its tarball comes
#                  from the download cache only (UPSTREAM_CACHE)
#   3.10.13        the stable series (patches/stable-base, STABLE_BASE):
#                  Postfix 3.10.13 (Debian's archive or the cache); the
#                  Debian packages are built from it
# BASE=<base> selects the series of every target (default: the development
# series), e.g. "make tree BASE=3.10.13".  Everything a base generates goes
# to build/<base>/ (download/, obj/, inst/, run/, fuzz/, deb/, chroot/ ...);
# its work tree is build/postfix-<version>/.
#
#   make demo     build patched and stock Postfix (as needed) and run the demo
#   make check    what CI runs, in three parts (each also a target of its own):
#                 check-primary  build patched, stock, units and tlsrpt of
#                                BASE (the development series) and run all
#                                tests against it
#                 check-stable   build patched and stock of the stable
#                                series and run STABLE_TESTS against it
#                                (upstream's unit tests in the patched build:
#                                its PCRE and ICU tests are skipped there)
#                 check-deb      the Debian package tests (stable series)
#
# Other targets (all of BASE, except the Debian ones):
#   make fetch        obtain and verify the upstream tarball
#   make tree         materialize build/postfix-<version>/ (upstream + patches)
#   make export       write the work tree's commits back to patches/<base>/
#   make build        build and install the patched tree under
#                     build/<base>/inst/patched
#   make build-stock  the same for pristine upstream, under build/<base>/inst/stock
#   make build-units  the patched tree again with PCRE and ICU, for upstream's
#                     unit tests only (build/<base>/obj/units, not installed)
#   make build-tlsrpt the patched tree again with TLSRPT support, linked with
#                     the stub library tests/stubs/tlsrpt (build/<base>/inst/tlsrpt,
#                     for tests/test_tlsrpt.py)
#   make unit         upstream's own unit tests only
#   make check-series build and install each prefix of the series: unit tests
#                     of src/tls and src/smtp, core policy pairs (~40 min)
#   make bench        stock vs patched, reuse off/on (BENCH_ARGS=--quick: ~4 min)
#   make longrun      10 min, 20000 messages: tlsproxy RSS and descriptors flat
#   make w6           W6: N (W6_ARGS="--n 100,1000,5000") cached TLS connections
#                     at once, stock vs patched: memory, descriptors, CPU
#   make resumption   TLS session resumption of new connections (client session
#                     cache): resumed vs full handshakes at the receiver, stock
#                     reuse off/on vs patched (~15 min; RESUMPTION_ARGS=--quick)
#   make deb          Debian packages for trixie (Debian 13) from Debian's own
#                     source package with the stable series added (always
#                     BASE=$(STABLE_BASE)), built in a clean debootstrap chroot
#                     (build/<stable>/deb/trixie/; cached by the checksums of
#                     their inputs, chroot included)
#   make check-deb    make deb, then install them into clean trixie chroots
#                     (root, private network and mount namespace), test,
#                     upgrade from trixie's postfix, update path, downgrade,
#                     purge (tests/test_debian_package.py); the host's packages
#                     and MTA are never touched
#   make deb-bookworm, make check-deb-bookworm
#                     the same for the Debian 12 backport
#                     (build/<stable>/deb/bookworm/)
#   make fuzz         fuzz the tlsproxy(8) protocol deserializers, FUZZ_SECONDS
#                     (default 600) per target (FUZZ_TARGETS="context ..." selects)
#   make clean        remove the builds and runs of BASE (not its work tree)
#
# UPSTREAM_CACHE=dir takes the tarball from a local download cache (verified
# by the same checksum) instead of Debian's archive; the development base
# needs it.  It defaults to ../shared/upstream when that is beside the
# project (as .ci/run sets it), so that make demo and make check work in a
# fresh clone.
# PYTEST_ARGS=... passes options to pytest (e.g. PYTEST_ARGS="-k spaced").

# The series: patches/<base>/.  BASE is exported, so that scripts and tests
# started by a recipe see the same one.
BASE       ?= $(shell cat patches/default-base)
STABLE_BASE := $(shell cat patches/stable-base)
export BASE
# What check-stable runs against the stable series.
STABLE_TESTS = test_upstream_units.py test_series_safety.py test_upgrade.py test_admin_defaults.py test_fallback.py test_fail_closed.py
# check-stable and the Debian targets build the stable series with a
# recursive "$(MAKE) BASE=$(STABLE_BASE) ...", not with prerequisites: a
# target made for BASE earlier in the same run (build-stock, ...) would not
# be made again for the stable series.

PYTHON      = /usr/bin/python3
PYTEST_ARGS =
# pytest-xdist workers for make check, each in a network namespace of its own
# (tests/conftest.py); PYTEST_JOBS=0 runs every test in one process, in the
# caller's network namespace.  Three workers on two cores: the tests spend
# most of their time waiting (messages are spaced seconds apart), and CI
# must stay under an hour with both series and the Debian package tests.
PYTEST_JOBS = 3
BENCH_ARGS  =
W6_ARGS     = --n 100,1000,5000
FUZZ_SECONDS = 600
FUZZ_TARGETS =
UPSTREAM_CACHE ?= $(if $(wildcard ../shared/upstream/.),$(abspath ../shared/upstream))
export UPSTREAM_CACHE

.PHONY: all fetch tree export build build-stock build-units build-tlsrpt check check-primary check-stable check-series unit demo bench longrun w6 resumption fuzz deps clean distclean deb check-deb deb-bookworm check-deb-bookworm

all: build

deps:
	scripts/deps all

fetch:
	scripts/fetch-upstream

tree:
	scripts/tree

export:
	scripts/export-patches

build:
	scripts/build patched

build-stock:
	scripts/build stock

build-units:
	scripts/build units

build-tlsrpt:
	scripts/build tlsrpt

check: check-primary check-stable check-deb

# All tests against BASE (the development series unless BASE says otherwise).
check-primary: deps build build-stock build-units build-tlsrpt
	cd tests && $(PYTHON) -m pytest -n $(PYTEST_JOBS) --dist loadfile $(PYTEST_ARGS)

# STABLE_TESTS against the stable series.
check-stable:
	$(MAKE) --no-print-directory BASE=$(STABLE_BASE) deps build build-stock
	cd tests && BASE=$(STABLE_BASE) UNIT_FLAVOUR=patched $(PYTHON) -m pytest -n $(PYTEST_JOBS) --dist loadfile $(PYTEST_ARGS) $(STABLE_TESTS)

unit: deps build-units
	cd tests && $(PYTHON) -m pytest $(PYTEST_ARGS) test_upstream_units.py

check-series: deps build-stock
	scripts/check-series

# The Debian packages: always the stable series.
deb:
	BASE=$(STABLE_BASE) scripts/deb

check-deb:
	$(MAKE) --no-print-directory BASE=$(STABLE_BASE) deps build-stock
	BASE=$(STABLE_BASE) scripts/check-deb

deb-bookworm:
	BASE=$(STABLE_BASE) DEB_RELEASE=bookworm scripts/deb

check-deb-bookworm:
	$(MAKE) --no-print-directory BASE=$(STABLE_BASE) deps build-stock
	BASE=$(STABLE_BASE) DEB_RELEASE=bookworm scripts/check-deb

bench: deps build build-stock
	$(PYTHON) bench/bench.py $(BENCH_ARGS)

w6: deps build build-stock
	$(PYTHON) bench/w6_many.py $(W6_ARGS)

resumption: deps build build-stock
	$(PYTHON) bench/resumption.py $(RESUMPTION_ARGS)

longrun: deps build
	$(PYTHON) tests/measure_longrun.py $(LONGRUN_ARGS)

fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz-run $(FUZZ_TARGETS)

demo: deps build build-stock
	$(PYTHON) demo/demo.py

# The builds and runs of BASE; its download, work tree and Debian chroots stay.
clean:
	rm -rf build/$(BASE)/obj build/$(BASE)/inst build/$(BASE)/stock-src build/$(BASE)/rev-src build/$(BASE)/run build/$(BASE)/fuzz build/$(BASE)/chroot/run-*

# Everything under build/, both bases and their work trees: export first.
distclean:
	rm -rf build
