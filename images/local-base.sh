#!/usr/bin/env bash
# Build a Debian bookworm + Python 3.11 base image locally, for machines that cannot pull
# python:3.11-slim from a registry (only Debian's package mirror is reachable):
#
#     sudo images/local-base.sh                      # -> localhost/sparsepipe-base:bookworm
#     BASE_IMAGE=localhost/sparsepipe-base:bookworm python3 images/build.py build cpu
#
# Needs root, debootstrap and buildah (apt-get install -y debootstrap buildah).
# Env: MIRROR (Debian mirror URL), SUITE (bookworm), TAG (image name), WORKDIR (scratch space,
# about 400 MB; removed at the end unless KEEP_ROOTFS=1).
set -euo pipefail

MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-bookworm}
TAG=${TAG:-localhost/sparsepipe-base:${SUITE}}
WORKDIR=${WORKDIR:-/var/tmp/sparsepipe-base}
ROOTFS=$WORKDIR/rootfs

[ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root" >&2; exit 2; }
for tool in debootstrap buildah; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install -y $tool)" >&2; exit 2; }
done

if [ ! -x "$ROOTFS/usr/bin/python3.11" ]; then
    rm -rf "$ROOTFS"
    mkdir -p "$WORKDIR"
    # minbase: dpkg, apt, coreutils, passwd (useradd) and friends; python3.11-venv brings ensurepip.
    debootstrap --variant=minbase \
        --include=python3.11,python3.11-venv,python3-venv,ca-certificates \
        "$SUITE" "$ROOTFS" "$MIRROR"
fi

# Same apt sources as Debian's own images (point releases and security fixes), then upgrade.
cat > "$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
EOF
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
chroot "$ROOTFS" sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get upgrade -y -qq && apt-get clean'
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/log/*.log \
       "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
: > "$ROOTFS/etc/resolv.conf"           # the engine writes its own at run time
# python3 and python3.11 both exist already; `python` as in python:3.11-slim.
ln -sf python3 "$ROOTFS/usr/bin/python"

python_version=$(chroot "$ROOTFS" python3 -c 'import platform; print(platform.python_version())')
ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
# Through a mount and tar (not `buildah copy`), so owners, setuid bits and links stay as dpkg set them.
mnt=$(buildah mount "$ctr")
tar -C "$ROOTFS" --numeric-owner -cf - . | tar -C "$mnt" --numeric-owner -xpf -
buildah umount "$ctr" >/dev/null
buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd /bin/bash \
    --label org.opencontainers.image.title="sparsepipe-base" \
    --label org.opencontainers.image.description="Debian $SUITE (debootstrap minbase) + Python $python_version, built by images/local-base.sh" \
    --label org.opencontainers.image.version="$SUITE-python$python_version" \
    "$ctr"
buildah commit --quiet --rm "$ctr" "$TAG" >/dev/null
trap - EXIT
[ "${KEEP_ROOTFS:-0}" = 1 ] || rm -rf "$WORKDIR"
echo "$TAG (Python $python_version): use BASE_IMAGE=$TAG"
