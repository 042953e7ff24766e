# Postfix TLS connection reuse patch series: build, test, demo.
#
#   make demo     build patched and stock Postfix (as needed) and run the demo
#   make check    build everything and run all tests (what CI runs), the
#                 Debian package tests (make check-deb) last
#
# Other targets:
#   make fetch        obtain and verify the upstream tarball
#   make tree         materialize build/postfix-<version>/ (upstream + patches)
#   make export       write the work tree's commits back to patches/
#   make build        build and install the patched tree under build/inst/patched
#   make build-stock  the same for pristine upstream, under build/inst/stock
#   make build-units  the patched tree again with PCRE and ICU, for upstream's
#                     unit tests only (build/obj/units, not installed)
#   make build-tlsrpt the patched tree again with TLSRPT support, linked with
#                     the stub library tests/stubs/tlsrpt (build/inst/tlsrpt,
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
#                     source package with the series added, built in a clean
#                     debootstrap chroot (build/deb/trixie/; cached by the
#                     checksums of their inputs, chroot included)
#   make check-deb    make deb, then install them into clean trixie chroots
#                     (root, private network and mount namespace), test,
#                     upgrade from trixie's postfix, update path, downgrade,
#                     purge (tests/test_debian_package.py); the host's packages
#                     and MTA are never touched
#   make deb-bookworm, make check-deb-bookworm
#                     the same for the Debian 12 backport (build/deb/bookworm/)
#   make fuzz         fuzz the tlsproxy(8) protocol deserializers, FUZZ_SECONDS
#                     (default 600) per target (FUZZ_TARGETS="context ..." selects)
#
# UPSTREAM_CACHE=dir takes the tarball from a local download cache (verified
# by the same checksum) instead of Debian's archive.  PYTEST_ARGS=... passes
# options to pytest (e.g. PYTEST_ARGS="-k spaced").

PYTHON      = /usr/bin/python3
PYTEST_ARGS =
# pytest-xdist workers for make check, each in a network namespace of its own
# (tests/conftest.py); PYTEST_JOBS=0 runs every test in one process, in the
# caller's network namespace.
PYTEST_JOBS = 2
BENCH_ARGS  =
W6_ARGS     = --n 100,1000,5000
FUZZ_SECONDS = 600
FUZZ_TARGETS =
export UPSTREAM_CACHE

.PHONY: all fetch tree export build build-stock build-units build-tlsrpt check check-series unit demo bench longrun w6 resumption fuzz deps clean distclean deb check-deb deb-bookworm check-deb-bookworm

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

check: deps build build-stock build-units build-tlsrpt
	cd tests && $(PYTHON) -m pytest -n $(PYTEST_JOBS) --dist loadfile $(PYTEST_ARGS)
	scripts/check-deb

unit: deps build-units
	cd tests && $(PYTHON) -m pytest $(PYTEST_ARGS) test_upstream_units.py

check-series: deps build-stock
	scripts/check-series

deb:
	scripts/deb

check-deb: deps build-stock
	scripts/check-deb

deb-bookworm:
	DEB_RELEASE=bookworm scripts/deb

check-deb-bookworm: deps build-stock
	DEB_RELEASE=bookworm scripts/check-deb

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

clean:
	rm -rf build/obj build/inst build/stock-src build/run build/fuzz build/chroot/run-*

# Everything under build/, the work tree included: export first.
distclean:
	rm -rf build
