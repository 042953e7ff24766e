# debchroot.sh - clean Debian systems (debootstrap chroots) under build/<base>/chroot/
# for building (scripts/deb) and testing (scripts/check-deb) the packages.
# Source after common.sh.  Defines
#
#   chroot_ensure NAME RELEASE VARIANT "PKGS" [EXTRA-KEY]
#       build/<base>/chroot/NAME: debootstrap --variant=VARIANT of RELEASE from
#       $DEB_MIRROR, with RELEASE-updates and RELEASE-security in its
#       sources.list, upgraded, PKGS installed with apt-get (no recommends),
#       apt's cache emptied.  Cached: made again only when its key (the
#       checksum of release, mirror, variant, packages, EXTRA-KEY and this
#       file) changed or CHROOT_REFRESH=1.  An interrupted creation leaves
#       NAME.new behind, never a half-made NAME.
#   chroot_run ROOT CMD...
#       CMD inside ROOT, in a private mount namespace with /proc, /sys and
#       /dev/pts mounted there (they vanish with the namespace: nothing stays
#       mounted on the host, whatever happens); CHROOT_NONET=1: also in a
#       network namespace of its own (no network).
#   chroot_manifest ROOT
#       "package version arch" of everything installed in ROOT, sorted: the
#       build environment, for the cache key of the packages.
#
# The host gets nothing installed: debootstrap is taken from Debian 12's
# package (apt-get download) and unpacked under build/<base>/tools/.

DEB_MIRROR=${DEB_MIRROR:-http://deb.debian.org/debian}
DEB_SECURITY_MIRROR=${DEB_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
DEB_KEYRING=${DEB_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
CHROOTS=$BUILD/chroot

debootstrap_tool() {
    local t=$BUILD/tools/debootstrap-root
    if [ ! -x "$t/usr/sbin/debootstrap" ]; then
	say "fetching debootstrap (Debian 12's package, unpacked under build/$BASE/tools/; nothing installed)"
	rm -rf "$BUILD/tools/dl" "$t" && mkdir -p "$BUILD/tools/dl" && chmod 777 "$BUILD/tools/dl"
	(cd "$BUILD/tools/dl" && apt-get download -q debootstrap) >/dev/null 2>&1 ||
	    die "apt-get download debootstrap failed"
	dpkg-deb -x "$BUILD"/tools/dl/debootstrap_*.deb "$t"
    fi
    printf '%s\n' "$t"
}

# Mounts of the chroot's pseudo file systems, then exec.  Runs inside
# "unshare -m --propagation private".
_chroot_mounts='root=$1; shift
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys" 2>/dev/null || true
mkdir -p "$root/dev/pts" && mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts" 2>/dev/null || true
exec chroot "$root" "$@"'

chroot_run() {
    local root=$1 net=; shift
    [ "${CHROOT_NONET:-0}" != 1 ] || net=-n
    unshare -m $net --propagation private sh -c "$_chroot_mounts" sh "$root" \
	/usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
	DEBIAN_FRONTEND=noninteractive "$@"
}

chroot_manifest() {
    chroot "$1" dpkg-query -W -f '${Package} ${Version} ${Architecture}\n' | sort
}

chroot_ensure() {
    local name=$1 release=$2 variant=$3 pkgs=$4 extra=${5:-}
    local dir=$CHROOTS/$name key t0 ds
    key=$( { printf '%s\n' "$release" "$DEB_MIRROR" "$DEB_SECURITY_MIRROR" "$variant" "$pkgs" "$extra"
	     sha256sum < "$TOP/scripts/debchroot.sh"; } | sha256sum | cut -d' ' -f1)
    if [ "${CHROOT_REFRESH:-0}" != 1 ] && [ -f "$dir/.key" ] && [ "$(cat "$dir/.key")" = "$key" ]; then
	say "chroot $name ($release) is up to date (CHROOT_REFRESH=1 makes it again)"
	return 0
    fi
    t0=$(date +%s)
    ds=$(debootstrap_tool)
    mkdir -p "$CHROOTS" "$CHROOTS/debs-$release"
    for d in "$dir.new" "$dir"; do
	if [ -e "$d" ]; then
	    ! grep -q " $d/" /proc/self/mountinfo || die "something is mounted under $d: not removing it"
	    rm -rf "$d"
	fi
    done
    say "debootstrap --variant=$variant $release into build/$BASE/chroot/$name (log: build/$BASE/chroot/$name.log)"
    # debootstrap mounts /proc and /sys in the target: in a private mount
    # namespace they go away with it, also when debootstrap fails.
    if ! unshare -m --propagation private env DEBOOTSTRAP_DIR="$ds/usr/share/debootstrap" \
	"$ds/usr/sbin/debootstrap" --variant="$variant" --keyring="$DEB_KEYRING" \
	--cache-dir="$CHROOTS/debs-$release" \
	"$release" "$dir.new" "$DEB_MIRROR" > "$dir.log" 2>&1; then
	tail -20 "$dir.log" >&2
	[ ! -f "$dir.new/debootstrap/debootstrap.log" ] || tail -20 "$dir.new/debootstrap/debootstrap.log" >&2
	die "debootstrap of $release failed (build/$BASE/chroot/$name.log)"
    fi
    cat > "$dir.new/etc/apt/sources.list" <<EOF
deb $DEB_MIRROR $release main
deb $DEB_MIRROR $release-updates main
deb $DEB_SECURITY_MIRROR $release-security main
deb-src $DEB_MIRROR $release main
EOF
    # No service starts from maintainer scripts in a chroot; man-db's
    # index is not rebuilt at every install.
    printf '#!/bin/sh\nexit 101\n' > "$dir.new/usr/sbin/policy-rc.d"
    chmod 755 "$dir.new/usr/sbin/policy-rc.d"
    echo 'man-db man-db/auto-update boolean false' | chroot "$dir.new" debconf-set-selections
    printf 'APT::Install-Recommends "false";\nDPkg::Options { "--force-unsafe-io"; };\n' \
	> "$dir.new/etc/apt/apt.conf.d/90tlsreuse-chroot"
    cp /etc/resolv.conf "$dir.new/etc/resolv.conf" 2>/dev/null || true
    {
	chroot_run "$dir.new" apt-get -q update &&
	chroot_run "$dir.new" apt-get -q -y dist-upgrade &&
	{ [ -z "$pkgs" ] || chroot_run "$dir.new" apt-get -q -y install $pkgs; } &&
	chroot_run "$dir.new" apt-get clean
    } >> "$dir.log" 2>&1 || { tail -30 "$dir.log" >&2; die "apt-get in the $release chroot failed (build/$BASE/chroot/$name.log)"; }
    printf '%s\n' "$key" > "$dir.new/.key"
    mv "$dir.new" "$dir"
    say "chroot $name ($release): $(( $(date +%s) - t0 )) s, $(chroot_manifest "$dir" | wc -l) packages"
}
