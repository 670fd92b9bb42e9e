#!/bin/sh
# Makes a small bootable disk image (qcow2) out of the busybox template, the way a user brings their own:
# an MBR disk with one FAT partition holding syslinux, Debian's kernel (bzImage) and the busybox initrd.
# SeaBIOS boots it; the guest's init reads its user-data from the NoCloud seed. The import tests use it.
# Usage: bootable-busybox.sh BUSYBOX_TEMPLATE_DIR OUT.qcow2
set -eu
T=$1
OUT=$2
KVER=$(sed -n 's/.*"kernel_version": "\(.*\)".*/\1/p' "$T/template.json")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkfs.vfat -n BOOT -i 4e494d43 -C "$W/boot.vfat" 65536 >/dev/null
mmd -i "$W/boot.vfat" ::/syslinux
mcopy -i "$W/boot.vfat" "/boot/vmlinuz-$KVER" ::/vmlinuz
mcopy -i "$W/boot.vfat" "$T/initrd.img" ::/initrd.img
printf 'DEFAULT l\nPROMPT 0\nTIMEOUT 0\nLABEL l\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND console=ttyS0 quiet panic=-1\n' \
    > "$W/syslinux.cfg"
mcopy -i "$W/boot.vfat" "$W/syslinux.cfg" ::/syslinux/syslinux.cfg
truncate -s 80M "$W/disk.raw"
printf 'label: dos\nlabel-id: 0x4e494d44\nstart=2048, type=c, bootable\n' | sfdisk -q "$W/disk.raw"
dd if="$W/boot.vfat" of="$W/disk.raw" bs=512 seek=2048 conv=notrunc status=none
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$W/disk.raw" bs=440 count=1 conv=notrunc status=none
syslinux --install --offset $((2048 * 512)) --directory /syslinux "$W/disk.raw"
qemu-img convert -f raw -O qcow2 "$W/disk.raw" "$OUT"
