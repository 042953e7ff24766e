# Shared settings for the project's scripts.  Source this file; it defines
#   TOP           the project directory
#   BASE          the series: patches/$BASE/ (environment or make variable
#                 BASE; unset: the contents of patches/default-base, the
#                 development series).  Exported, so that every script and
#                 test started from here works on the same series.
#   STABLE_BASE   the stable series (patches/stable-base), which the Debian
#                 packages are built from
#   PATCHES       $TOP/patches/$BASE: series, *.patch, base.conf
#   POSTFIX_VERSION, DEBIAN_SOURCE_VERSION, DEBIAN_SUITE, TARBALL_NAME,
#   TARBALL_SHA256  from $PATCHES/base.conf (DEBIAN_* empty: no Debian
#                 source package of that base)
#   BUILD         $TOP/build/$BASE (never committed): download/, obj/, inst/,
#                 stock-src/, rev-src/, run/, fuzz/, deb/, chroot/ ... of
#                 this series
#   TARBALL       $BUILD/download/$TARBALL_NAME (verified copy)
#   WORKTREE      $TOP/build/postfix-<version> (git repository, tag upstream;
#                 the bases have different versions, so their trees never
#                 meet)

say()  { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die()  { printf '%s: fatal: %s\n' "${0##*/}" "$*" >&2; exit 1; }

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# bases - the series in patches/, one per line
bases() {
    local c
    for c in "$TOP"/patches/*/base.conf; do
	[ -f "$c" ] || continue
	c=${c%/base.conf}
	printf '%s\n' "${c##*/}"
    done
}

STABLE_BASE=$(cat "$TOP/patches/stable-base")
BASE=${BASE:-$(cat "$TOP/patches/default-base")}
case $BASE in
""|.|..|*/*|*[!A-Za-z0-9._-]*) die "bad BASE '$BASE' (bases: $(bases | paste -sd ' ' -))" ;;
esac
[ -f "$TOP/patches/$BASE/base.conf" ] ||
    die "no series for BASE=$BASE (no patches/$BASE/base.conf); the bases are: $(bases | paste -sd ' ' -)"
export BASE
PATCHES=$TOP/patches/$BASE

POSTFIX_VERSION= DEBIAN_SOURCE_VERSION= DEBIAN_SUITE= TARBALL_NAME= TARBALL_SHA256=
. "$PATCHES/base.conf"
[ -n "$POSTFIX_VERSION" ] && [ -n "$TARBALL_NAME" ] && [ -n "$TARBALL_SHA256" ] ||
    die "patches/$BASE/base.conf must set POSTFIX_VERSION, TARBALL_NAME and TARBALL_SHA256"

BUILD=$TOP/build/$BASE
TARBALL=$BUILD/download/$TARBALL_NAME
WORKTREE=$TOP/build/postfix-$POSTFIX_VERSION

# need_debian_source - die unless this base has a Debian source package.
need_debian_source() {
    [ -n "$DEBIAN_SOURCE_VERSION" ] ||
	die "BASE=$BASE has no Debian source package (no DEBIAN_SOURCE_VERSION in patches/$BASE/base.conf): the Debian packages are built from the stable series, BASE=$STABLE_BASE (make deb and make check-deb use it)"
}

# sha256_ok FILE - true when FILE has the recorded upstream checksum.
sha256_ok() {
    [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$TARBALL_SHA256" ]
}
