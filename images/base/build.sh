#!/usr/bin/env bash
# The base both images build FROM here: no registry can be pulled from on these machines,
# so debootstrap a minimal Debian bookworm with python3 from the mirror apt already uses,
# trim it, and `podman import` it. The root file system is cached as a tarball in
# build/base/ (git-ignored): a second run only imports it again, or does nothing when
# the image exists. Elsewhere, build the images with --build-arg BASE=python:3.11-slim.
#
#   images/base/build.sh            # localhost/edgefleet-base:bookworm
#   FORCE=1 images/base/build.sh    # debootstrap again
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${IMAGE:-localhost/edgefleet-base:bookworm}
CACHE=build/base
TARBALL=$CACHE/bookworm-python3.tar
SUITE=bookworm
# python3 only: no python3-venv or pip (the images install wheels with pip run from its
# own wheel), no ca-certificates (devices trust the controller's pinned root, not the web).
INCLUDE=python3-minimal,libpython3.11-stdlib,python3

mirror() {
    # The mirror apt uses here (deb822 or one-line sources), so debootstrap needs no other host.
    local url
    url=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list 2>/dev/null | grep -v security | head -1 |
        sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//; s/[[:space:]].*//')
    echo "${url:-http://deb.debian.org/debian}"
}

if [ -z "${FORCE:-}" ] && podman image exists "$IMAGE"; then
    echo "base: $IMAGE exists"
    exit 0
fi

if [ -n "${FORCE:-}" ] || [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null || {
        echo "debootstrap is missing: apt-get install debootstrap (make system-deps does it)" >&2
        exit 1
    }
    [ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 1; }
    mkdir -p "$CACHE"
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    echo "base: debootstrap $SUITE from $(mirror) into $root"
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$(mirror)" >"$CACHE/debootstrap.log"
    # Trim what a container never reads: docs, man pages, locales, apt's lists and caches.
    rm -rf "$root"/usr/share/{doc,man,info,locale,lintian,linda}/* \
        "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
        "$root"/var/log/* "$root"/tmp/*
    # Nothing is installed with apt or dpkg in an image (wheels come from the host), so the
    # package tools and the perl their scripts need go too; glibc's iconv modules (python
    # has its own codecs); python's tests, IDE, 2to3 and Tk. Stdlib bytecode goes too
    # (~10 MB): python compiles what it imports at start (a fraction of a second).
    rm -rf "$root"/usr/bin/apt* "$root"/usr/lib/apt "$root"/usr/lib/x86_64-linux-gnu/libapt-* \
        "$root"/etc/apt "$root"/var/lib/apt "$root"/var/cache/apt \
        "$root"/usr/bin/perl* "$root"/usr/lib/x86_64-linux-gnu/perl-base "$root"/usr/share/perl5 \
        "$root"/usr/lib/x86_64-linux-gnu/gconv \
        "$root"/usr/lib/python3.11/{test,idlelib,lib2to3,pydoc_data,tkinter,turtledemo,ensurepip}
    find "$root"/usr/lib/python3* -name __pycache__ -prune -exec rm -rf {} +
    tar -C "$root" --numeric-owner -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
fi

echo "base: podman import $TARBALL as $IMAGE"
podman import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' "$TARBALL" "$IMAGE" >/dev/null
podman image ls "$IMAGE"
