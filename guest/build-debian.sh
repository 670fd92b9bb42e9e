#!/bin/sh
# Builds the stock `debian-12` template: a bootable disk image of Debian 12 (bookworm) made from Debian's
# packages only, the way public cloud images are made, for the qemu driver's disk-boot mode.
#
#   OUT_DIR/disk-<sha>.qcow2  the image (GPT: a FAT boot partition, then the ext4 root, last so that
#                             cloud-init's growpart can grow it to the instance's disk)
#   OUT_DIR/base.qcow2        symlink to the current disk-<sha>.qcow2
#   OUT_DIR/template.json     the manifest the driver reads
#
# Usage (as root: debootstrap chroots): guest/build-debian.sh OUT_DIR
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), NIMBUS_ROOTFS_CACHE (a directory: the
# debootstrap'd root is kept there as a tarball keyed by a hash of this script and the package list, so a
# second build skips the download), SOURCE_DATE_EPOCH (file times in the image; default 0).
#
# What is inside: linux-image-cloud-amd64, cloud-init (NoCloud only: the driver attaches a `cidata` disk),
# openssh-server, qemu-guest-agent, growpart, ifupdown, dbus + logind (so that an ACPI power-down is obeyed),
# and a one-shot unit that prints `NIMBUS-READY` on the serial console once cloud-init has applied the
# instance's users, keys and network and sshd runs: the driver's signal that the guest can be logged into.
#
# Boot: BIOS through syslinux (gptmbr.bin in the MBR, the boot partition marked legacy-bootable) and UEFI
# through Debian's signed shim and GRUB (so it also boots with OVMF's secure boot and Microsoft's keys
# enrolled); both load the kernel and initrd copied onto the boot partition. Kernel updates made inside a
# guest are not copied there: the instance keeps booting the kernel of its image.
#
# Reproducible as a recipe: the same mirror state gives the same packages and configuration. It is not
# byte-for-byte reproducible (debootstrap records install times), which is why the cache above exists.
set -eu

[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "build-debian.sh: run as root (debootstrap needs chroot)" >&2; exit 1; }
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(realpath -m "$1")
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
export LC_ALL=C DEBIAN_FRONTEND=noninteractive

for tool in debootstrap mkfs.vfat mcopy syslinux sfdisk qemu-img mkfs.ext4; do
    command -v "$tool" >/dev/null || {
        echo "build-debian.sh: $tool is missing; run guest/install-deps.sh (guest/packages.txt)" >&2
        exit 1
    }
done
GPTMBR=/usr/lib/syslinux/mbr/gptmbr.bin
[ -r "$GPTMBR" ] || { echo "build-debian.sh: $GPTMBR is missing; install syslinux-common" >&2; exit 1; }

PACKAGES="linux-image-cloud-amd64,cloud-init,openssh-server,qemu-guest-agent,systemd-sysv,udev,dbus,libpam-systemd,\
ifupdown,iproute2,cloud-guest-utils,fdisk,e2fsprogs,sudo,netbase,initramfs-tools,ca-certificates,less"
ROOT_MB=2048
BOOT_MB=128

mkdir -p "$OUT"
W=$(mktemp -d /var/tmp/nimbus-debian.XXXXXX)
cleanup() {
    for m in proc sys dev/pts dev; do umount "$W/root/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$W"
}
trap cleanup EXIT INT TERM
R=$W/root

# 1. The root filesystem, from the cache when the recipe has not changed.
# The cache key covers what the cached part is made from: the package list, suite and mirror, and the
# version of the steps below up to the tarball (bump it when they change).
key=$(echo "rootfs-v1 $PACKAGES $SUITE $MIRROR" | sha256sum | cut -c1-16)
cached=${NIMBUS_ROOTFS_CACHE:+$NIMBUS_ROOTFS_CACHE/debian-12-rootfs-$key.tar}
if [ -n "$cached" ] && [ -r "$cached" ]; then
    echo "build-debian.sh: root filesystem from $cached"
    mkdir -p "$R"
    tar -C "$R" --numeric-owner -xpf "$cached"
else
    t0=$(date +%s)
    # debootstrap's own resolver does not follow virtual packages (cloud-init's python3-cryptography needs
    # one), so it lays down the minimal base and apt, in the chroot, installs the rest.
    debootstrap --variant=minbase "$SUITE" "$R" "$MIRROR" > "$W/debootstrap.log" 2>&1 || {
        tail -n 30 "$W/debootstrap.log" >&2
        tail -n 30 "$R/debootstrap/debootstrap.log" >&2 2>/dev/null || true
        echo "build-debian.sh: debootstrap failed" >&2
        exit 1
    }
    mount -t proc proc "$R/proc"
    mount -t sysfs sys "$R/sys"
    mount --bind /dev "$R/dev"
    mount -t devpts devpts "$R/dev/pts"
    # No service may start inside the chroot.
    printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"
    chmod 0755 "$R/usr/sbin/policy-rc.d"
    chroot "$R" apt-get install -y -q --no-install-recommends $(echo "$PACKAGES" | tr ',' ' ') > "$W/apt.log" 2>&1 || {
        tail -n 30 "$W/apt.log" >&2
        echo "build-debian.sh: apt-get install in the chroot failed" >&2
        exit 1
    }
    rm -f "$R/usr/sbin/policy-rc.d"
    echo "build-debian.sh: debootstrap took $(( $(date +%s) - t0 ))s"

    for m in dev/pts dev sys proc; do umount "$R/$m"; done
    rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb "$R"/var/log/*.log \
        "$R"/debootstrap "$R"/tmp/* "$R"/var/tmp/*
    if [ -n "$cached" ]; then
        mkdir -p "$NIMBUS_ROOTFS_CACHE"
        tar -C "$R" --numeric-owner -cpf "$cached.tmp" . && mv "$cached.tmp" "$cached"
    fi
fi
# 2. The image's configuration (not cached: changing it costs no download). cloud-init reads only the NoCloud seed the driver attaches (no network
# probing for metadata services), and its default user is `debian`, as on Debian's own cloud images.
cat > "$R/etc/cloud/cloud.cfg.d/90-nimbus.cfg" <<'EOF'
# Nimbus attaches a NoCloud seed (a disk labelled cidata) to every instance.
datasource_list: [NoCloud, None]
# C.UTF-8 needs no locale generation; RSA host keys take seconds to make under TCG, ed25519 and ECDSA do not.
locale: C.UTF-8
ssh_genkeytypes: [ed25519, ecdsa]
system_info:
  default_user:
    name: debian
    lock_passwd: true
    gecos: Debian
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
EOF
cat > "$R/etc/systemd/system/nimbus-ready.service" <<'EOF'
[Unit]
Description=Tell the host on the serial console that the guest can be logged into
After=cloud-init.service ssh.service
Wants=ssh.service

[Service]
Type=oneshot
# A line of its own: getty's login prompt may be on the console's current line.
ExecStart=/bin/sh -c 'printf "\\nNIMBUS-READY uptime=%%s\\n" "$(cut -d" " -f1 /proc/uptime)" > /dev/ttyS0'

[Install]
WantedBy=multi-user.target
EOF
chroot "$R" systemctl enable nimbus-ready.service >/dev/null 2>&1
printf 'LABEL=rootfs / ext4 defaults,discard,errors=remount-ro 0 1\n' > "$R/etc/fstab"
printf 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n' > "$R/etc/network/interfaces"
# Per-instance identity is made at first boot: cloud-init writes new SSH host keys, systemd a machine id.
rm -f "$R"/etc/ssh/ssh_host_*
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id" "$R/etc/hostname"
KERNEL=$(ls "$R"/boot/vmlinuz-* | sort -V | tail -1)
INITRD=$R/boot/initrd.img-${KERNEL##*/vmlinuz-}
[ -r "$INITRD" ] || { echo "build-debian.sh: no initrd for $KERNEL" >&2; exit 1; }
KVER=${KERNEL##*/vmlinuz-}

# 3. Signed UEFI boot loaders from the same archive (downloaded, not installed on this host).
mkdir -p "$W/efi"
(cd "$W/efi" && apt-get download -q shim-signed grub-efi-amd64-signed >/dev/null 2>&1) || {
    echo "build-debian.sh: apt-get download shim-signed grub-efi-amd64-signed failed (run apt-get update?)" >&2
    exit 1
}
for deb in "$W"/efi/*.deb; do dpkg-deb -x "$deb" "$W/efi/x"; done
SHIM=$W/efi/x/usr/lib/shim/shimx64.efi.signed
GRUB=$W/efi/x/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed
[ -r "$SHIM" ] && [ -r "$GRUB" ] || { echo "build-debian.sh: shim or grub missing from the packages" >&2; exit 1; }

# 4. The boot partition (FAT): kernel, initrd, syslinux for BIOS, shim + GRUB for UEFI.
CMDLINE="root=LABEL=rootfs ro console=ttyS0,115200n8 net.ifnames=0"
B=$W/bootfs
mkdir -p "$B/syslinux" "$B/EFI/BOOT" "$B/EFI/debian"
cp "$KERNEL" "$B/vmlinuz"
cp "$INITRD" "$B/initrd.img"
printf 'DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND %s\n' \
    "$CMDLINE" > "$B/syslinux/syslinux.cfg"
cp "$SHIM" "$B/EFI/BOOT/BOOTX64.EFI"
cp "$GRUB" "$B/EFI/BOOT/grubx64.efi"
cat > "$B/EFI/BOOT/grub.cfg" <<EOF
set timeout=0
set default=0
search --no-floppy --label NIMBOOT --set=root
menuentry "Debian 12" {
    linux /vmlinuz $CMDLINE
    initrd /initrd.img
}
EOF
cp "$B/EFI/BOOT/grub.cfg" "$B/EFI/debian/grub.cfg"
find "$B" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkfs.vfat -F 32 -n NIMBOOT -i 4e494d42 -C "$W/boot.vfat" $((BOOT_MB * 1024)) >/dev/null
(cd "$B" && find . -mindepth 1 -type d | sort | while read -r d; do mmd -i "$W/boot.vfat" "::${d#.}"; done)
(cd "$B" && find . -type f | sort | while read -r f; do mcopy -m -i "$W/boot.vfat" "$f" "::${f#.}"; done)

# 5. The root partition (ext4, fixed UUID and hash seed).
E2FSPROGS_FAKE_TIME=$((SOURCE_DATE_EPOCH > 0 ? SOURCE_DATE_EPOCH : 1)) mkfs.ext4 -q -F -L rootfs \
    -U 6e696d62-7573-4000-8000-0000000000d1 -E hash_seed=6e696d62-7573-4000-8000-0000000000d2 \
    -d "$R" "$W/root.ext4" "${ROOT_MB}M"

# 6. The disk: GPT, boot partition first (legacy-bootable for gptmbr.bin), root last.
boot_start=2048
boot_sectors=$((BOOT_MB * 2048))
root_start=$((boot_start + boot_sectors))
root_sectors=$((ROOT_MB * 2048))
total=$((root_start + root_sectors + 2048))
truncate -s $((total * 512)) "$W/disk.raw"
sfdisk -q "$W/disk.raw" <<EOF
label: gpt
label-id: 6E696D62-7573-4000-8000-0000000000D0
first-lba: 2048
start=$boot_start, size=$boot_sectors, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=6E696D62-7573-4000-8000-0000000000D3, name="NIMBOOT", attrs="LegacyBIOSBootable"
start=$root_start, size=$root_sectors, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=6E696D62-7573-4000-8000-0000000000D4, name="rootfs"
EOF
dd if="$W/boot.vfat" of="$W/disk.raw" bs=512 seek=$boot_start conv=notrunc,sparse status=none
dd if="$W/root.ext4" of="$W/disk.raw" bs=512 seek=$root_start conv=notrunc,sparse status=none
dd if="$GPTMBR" of="$W/disk.raw" bs=440 count=1 conv=notrunc status=none
syslinux --install --offset $((boot_start * 512)) --directory /syslinux "$W/disk.raw"
qemu-img convert -f raw -O qcow2 "$W/disk.raw" "$W/disk.qcow2"
sha=$(sha256sum "$W/disk.qcow2" | cut -c1-16)
[ -e "$OUT/disk-$sha.qcow2" ] || mv "$W/disk.qcow2" "$OUT/disk-$sha.qcow2"
ln -sfn "disk-$sha.qcow2" "$OUT/base.qcow2"

size=$(stat -c %s "$OUT/disk-$sha.qcow2")
checksum=$(sha256sum "$OUT/disk-$sha.qcow2" | cut -c1-64)
cat > "$W/template.json" <<EOF
{
  "name": "debian-12",
  "description": "Debian 12 (bookworm) with cloud-init, OpenSSH and the QEMU guest agent, kernel $KVER",
  "os_name": "debian",
  "os_version": "12",
  "boot_mode": "bios",
  "firmware": ["bios", "uefi"],
  "disk": "disk-$sha.qcow2",
  "seed": "nocloud",
  "ready_marker": "NIMBUS-READY",
  "boot_timeout_secs": 300,
  "guest_agent": true,
  "min_disk_gb": 3,
  "min_memory_mib": 512,
  "password_enabled": true,
  "ssh_key_enabled": true,
  "default_user": "debian",
  "kernel_version": "$KVER",
  "checksum": "sha256:$checksum",
  "size_bytes": $size
}
EOF
mv "$W/template.json" "$OUT/template.json"
echo "built debian-12 template in $OUT (kernel $KVER, disk-$sha.qcow2, $((size >> 20)) MiB)"
