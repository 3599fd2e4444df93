#!/usr/bin/env bash
# Builds qemu-system-x86_64 from Debian 13's QEMU source package, with our
# patch (default) or without it (--unpatched), and prints the binary's path on
# the last line of stdout.
#
# The build lives in a cache outside the clone, keyed by the QEMU version and
# the patch's content, so a fresh clone (CI) reuses it:
#   ${HEKI_QEMU_CACHE:-$HOME/.cache/heki-plugin/qemu}/<version>-<patch hash>/
# The machine's own apt sources are never touched: the source package comes
# through a private apt configuration kept in the cache.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
patch_file="$here/patches/qemu-10.0-heki.patch"
cache=${HEKI_QEMU_CACHE:-$HOME/.cache/heki-plugin/qemu}
suite=${HEKI_QEMU_SUITE:-trixie}
mirror=${HEKI_QEMU_MIRROR:-http://deb.debian.org/debian}
meson_version=1.5.0
variant=patched
[[ "${1:-}" == "--unpatched" ]] && variant=unpatched

step() { echo "build-qemu: $*" >&2; }
fail() { echo "build-qemu: FAILED: $*" >&2; exit 1; }

mkdir -p "$cache"
# One build at a time per cache (two test runs may start together).
exec 9>"$cache/.lock"
flock 9

step "checking build dependencies (apt)"
pkgs=(ninja-build libpixman-1-dev flex bison libfdt-dev libglib2.0-dev pkg-config
      dpkg-dev qemu-system-data binutils gcc make xz-utils python3-venv)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    step "installing ${missing[*]}"
    sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd=sudo
    $sudo_cmd apt-get update -qq >&2 || fail "apt-get update"
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >&2 \
        || fail "apt-get install ${missing[*]}"
fi

# A private apt configuration: a deb-src line for $suite, its own lists and
# archives; -o Dir::Etc::sourceparts=- keeps the machine's sources out.
apt_dir="$cache/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
echo "deb-src $mirror $suite main" > "$apt_dir/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o "Dir::Etc::sourceparts=-"
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::archives=$apt_dir/archives"
          -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root")
if [[ -z $(find "$apt_dir/lists" -name '*Sources*' -mmin -1440 2>/dev/null) ]]; then
    step "fetching the $suite source index (private apt configuration in $apt_dir)"
    apt-get "${apt_opts[@]}" update -qq >&2 || fail "apt-get update of $suite sources"
fi
# (awk reads to the end: an early exit would SIGPIPE apt-cache under pipefail)
version=$(apt-cache "${apt_opts[@]}" showsrc qemu 2>/dev/null \
          | awk '/^Package: qemu$/ {p=1} p && /^Version:/ && !v {v=$2} END {print v}')
[[ -n "$version" ]] || fail "no qemu source package in $suite"
upstream=${version#*:}; upstream=${upstream%%+*}; upstream=${upstream%%-*}
[[ "$upstream" == 10.0.* ]] || fail "expected QEMU 10.0.x in $suite, found $version"

if [[ $variant == patched ]]; then
    [[ -f "$patch_file" ]] || fail "missing $patch_file"
    # The patch carries the plugin's header (include/qemu/heki-plugin.h; the
    # Makefile's header-check keeps it equal to include/heki_plugin.h).
    key="$upstream-$(sha256sum < "$patch_file" | cut -c1-12)"
else
    key="$upstream-unpatched"
fi
dir="$cache/$key"
binary="$dir/build/qemu-system-x86_64"
if [[ -f "$dir/.complete" && -x "$binary" ]]; then
    step "reusing $binary (QEMU $version, $variant)"
    echo "$binary"
    exit 0
fi

src_pkg="$cache/source-$version"
if [[ ! -f "$src_pkg/.complete" ]]; then
    step "downloading Debian's qemu $version source package"
    rm -rf "$src_pkg"; mkdir -p "$src_pkg"
    (cd "$src_pkg" && apt-get "${apt_opts[@]}" source --download-only -qq "qemu=$version" >&2) \
        || fail "apt-get source qemu=$version"
    touch "$src_pkg/.complete"
fi

venv="$cache/venv-meson-$meson_version"
if [[ ! -f "$venv/.complete" ]]; then
    # The +ds repack carries none of the wheels in python/wheels, and QEMU
    # 10.0's configure wants meson >= 1.5 (Debian's series drops pycotap).
    step "creating a Python venv with meson $meson_version (PyPI)"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 || fail "python3 -m venv"
    "$venv/bin/pip" install -q "meson==$meson_version" >&2 || fail "pip install meson==$meson_version"
    touch "$venv/.complete"
fi

step "unpacking into $dir/src (Debian's patch series applied)"
rm -rf "$dir"; mkdir -p "$dir"
dsc=$(ls "$src_pkg"/qemu_*.dsc | head -1)
dpkg-source --no-check -x "$dsc" "$dir/src" >/dev/null 2>&1 \
    || fail "dpkg-source -x $dsc"
if [[ $variant == patched ]]; then
    step "applying $(basename "$patch_file")"
    patch -d "$dir/src" -p1 --forward --quiet < "$patch_file" || fail "the patch does not apply to QEMU $version"
fi

step "configuring (x86_64-softmmu, KVM only)"
mkdir -p "$dir/build"
(cd "$dir/build" && "$dir/src/configure" --python="$venv/bin/python3" \
    --target-list=x86_64-softmmu --enable-kvm --disable-tcg --disable-docs \
    --disable-user --disable-werror --disable-install-blobs \
    --disable-gtk --disable-sdl --disable-vnc --disable-opengl --disable-spice \
    --disable-curses --disable-libusb --disable-usb-redir --disable-xen \
    --disable-slirp --disable-capstone --disable-gnutls --disable-nettle \
    --disable-gcrypt --disable-libudev --disable-pa --disable-alsa --disable-oss \
    --disable-jack --disable-pipewire --disable-sndio \
    > "$dir/configure.log" 2>&1) || { tail -30 "$dir/configure.log" >&2; fail "configure (log: $dir/configure.log)"; }

step "building with ninja ($(nproc) jobs; ~6 min on 2 cores the first time)"
start=$(date +%s)
ninja -C "$dir/build" -j"$(nproc)" qemu-system-x86_64 > "$dir/build.log" 2>&1 \
    || { tail -40 "$dir/build.log" >&2; fail "ninja (log: $dir/build.log)"; }
step "built in $(( $(date +%s) - start )) s"
touch "$dir/.complete"
echo "$binary"
