#!/usr/bin/env bash
# Installs what Yunchi needs to build and test on Debian 12, only if missing.
#   scripts/deps.sh         build + test dependencies (C compiler, libvirt headers, pkg-config, iproute2,
#                           libvirtd and QEMU for the real-host tests, the tiny guest image's packages)
#   scripts/deps.sh proto   also protoc and the well-known protos
set -euo pipefail
need=()
# cgo (the libvirt bindings, the race detector) needs a C compiler and libc headers.
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -f /usr/include/stdlib.h ] || need+=(libc6-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists libvirt 2>/dev/null || need+=(libvirt-dev)
# The chaos harness (internal/chaos) runs each process in a network namespace
# of its own: iproute2's ip makes them and cuts their links.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# Real hypervisor hosts (internal/libvirthost): private libvirtd + QEMU.
command -v libvirtd >/dev/null 2>&1 || need+=(libvirt-daemon-system)
command -v virsh >/dev/null 2>&1 || need+=(libvirt-clients)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
# The tiny bootable guest image (internal/tinyimage): Debian's cloud kernel,
# a static busybox, and syslinux with the FAT tools that make the boot disk.
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
for p in linux-image-cloud-amd64 busybox-static syslinux mtools dosfstools; do
  installed "$p" || need+=("$p")
done
if [ "${1:-}" = proto ]; then
  command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
  [ -f /usr/include/google/protobuf/timestamp.proto ] || need+=(libprotobuf-dev)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing ${need[*]} (apt-get)" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
