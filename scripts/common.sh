# Shared settings for the project's scripts.  Source this file; it defines
#   TOP           the project directory
#   BUILD         $TOP/build (never committed)
#   POSTFIX_VERSION, DEBIAN_SOURCE_VERSION, DEBIAN_SUITE, TARBALL_SHA256
#   TARBALL_NAME  postfix_<version>.orig.tar.gz
#   TARBALL       $BUILD/download/$TARBALL_NAME (verified copy)
#   WORKTREE      $BUILD/postfix-<version> (git repository, tag upstream)

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$TOP/build}
. "$TOP/upstream.conf"
TARBALL_NAME=postfix_${POSTFIX_VERSION}.orig.tar.gz
TARBALL=$BUILD/download/$TARBALL_NAME
WORKTREE=$BUILD/postfix-$POSTFIX_VERSION

say()  { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die()  { printf '%s: fatal: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# sha256_ok FILE - true when FILE has the recorded upstream checksum.
sha256_ok() {
    [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$TARBALL_SHA256" ]
}
