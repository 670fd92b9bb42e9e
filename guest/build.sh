#!/bin/sh
# Builds the stock `busybox` template for the qemu driver, from Debian packages only (see packages.txt):
#   OUT_DIR/vmlinux         uncompressed PVH kernel extracted from linux-image-amd64's /boot/vmlinuz
#   OUT_DIR/initrd.img      busybox-static + the kernel modules the guest needs + guest/init
#   OUT_DIR/disk-<sha>.qcow2  an ext4 data disk labelled `data` (immutable: overlays point at it by name)
#   OUT_DIR/base.qcow2      symlink to the current disk-<sha>.qcow2
#   OUT_DIR/template.json   the manifest the driver reads (with the sha256 of this script and init: `recipe`)
# Usage: guest/build.sh OUT_DIR [KERNEL_VERSION]
# The output is reproducible (fixed mtimes, sorted cpio, gzip -n, fixed ext4 UUID/seed/time); a second build
# with the same packages gives byte-identical files.
set -eu

[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR [KERNEL_VERSION]" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(realpath -m "$1")
KVER=${2:-$(ls /lib/modules | grep amd64 | sort -V | tail -1)}
[ -n "$KVER" ] && [ -r "/boot/vmlinuz-$KVER" ] || { echo "build.sh: no amd64 kernel; install linux-image-amd64" >&2; exit 1; }
BUSYBOX=/bin/busybox
file_is_static() { ! ldd "$1" >/dev/null 2>&1; }
file_is_static "$BUSYBOX" || { echo "build.sh: $BUSYBOX is not static; install busybox-static" >&2; exit 1; }
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
export LC_ALL=C

mkdir -p "$OUT"
W=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$W"' EXIT

# Kernel: the PVH entry point of the uncompressed ELF lets QEMU skip firmware decompression (half the boot
# time under TCG). vmlinuz embeds one xz stream; --single-stream stops at its end.
kstamp="$KVER $(sha256sum "/boot/vmlinuz-$KVER" | cut -c1-64)"
if [ ! -r "$OUT/vmlinux" ] || [ "$(cat "$OUT/.vmlinux.src" 2>/dev/null)" != "$kstamp" ]; then
    off=$(grep -obUaP '\xfd7zXZ\x00' "/boot/vmlinuz-$KVER" | head -1 | cut -d: -f1)
    [ -n "$off" ] || { echo "build.sh: no xz stream in /boot/vmlinuz-$KVER" >&2; exit 1; }
    tail -c +$((off + 1)) "/boot/vmlinuz-$KVER" | xz -dc --single-stream > "$W/vmlinux"
    mv "$W/vmlinux" "$OUT/vmlinux"
    echo "$kstamp" > "$OUT/.vmlinux.src"
fi

# Initramfs root.
R=$W/root
mkdir -p "$R"/bin "$R"/dev "$R"/proc "$R"/sys "$R"/run "$R"/tmp "$R"/mnt/data "$R"/mnt/seed "$R"/etc/acpi/PWRF "$R"/lib/modules \
    "$R"/root "$R"/usr "$R"/lib64 "$R"/lib/x86_64-linux-gnu
cp "$BUSYBOX" "$R"/bin/busybox
for a in $("$BUSYBOX" --list); do [ "$a" = busybox ] || ln -s busybox "$R/bin/$a"; done
ln -s bin "$R"/sbin
ln -s ../bin "$R"/usr/bin
ln -s ../bin "$R"/usr/sbin
# busybox has no resize2fs; the data disk's filesystem must follow the disk when it is grown.
cp /sbin/resize2fs "$R"/bin/resize2fs
ldd /sbin/resize2fs | awk '$2=="=>"{print $3} $1 ~ /^\//{print $1}' | while read -r lib; do
    case $lib in
    */ld-linux*) cp -L "$lib" "$R"/lib64/ ;;
    *) cp -L "$lib" "$R"/lib/x86_64-linux-gnu/ ;;
    esac
done
: > "$R"/etc/modules
for m in virtio_pci virtio_blk virtio_net virtio_rng crc32c_generic ext4 isofs qemu_fw_cfg evdev button; do
    modprobe -S "$KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
    case $ko in
    *.ko) cp "$ko" "$R"/lib/modules/ ;;
    *.ko.xz) xz -dc "$ko" > "$R/lib/modules/$(basename "$ko" .xz)"; ko=${ko%.xz} ;;
    *.ko.zst) zstd -qdc "$ko" > "$R/lib/modules/$(basename "$ko" .zst)"; ko=${ko%.zst} ;;
    esac
    basename "$ko" >> "$R"/etc/modules
done
printf '#!/bin/sh\nexec kill -USR2 1\n' > "$R"/etc/acpi/PWRF/00000080
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$R"/etc/passwd
printf 'root:*:0:0:99999:7:::\n' > "$R"/etc/shadow
printf 'root:x:0:\n' > "$R"/etc/group
printf 'Nimbus busybox guest \\n (\\l)\n\n' > "$R"/etc/issue
cp "$HERE"/init "$R"/init
chmod 0755 "$R"/init "$R"/etc/acpi/PWRF/00000080
chmod 0600 "$R"/etc/shadow
find "$R" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$R" && find . | sort | cpio --quiet -o -H newc --reproducible -R 0:0 | gzip -n -6) > "$W/initrd.img"
mv "$W/initrd.img" "$OUT/initrd.img"

# Data disk. Overlays of running and stopped instances point at it by path, so a disk with other content
# gets a new name instead of replacing the file under them.
D=$W/data
mkdir -p "$D"
printf 'This is the data disk of a Nimbus busybox instance, mounted on /mnt/data.\n' > "$D"/README
find "$D" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
E2FSPROGS_FAKE_TIME=$((SOURCE_DATE_EPOCH > 0 ? SOURCE_DATE_EPOCH : 1)) mkfs.ext4 -q -F -L data -U 6e696d62-7573-4000-8000-000000000001 \
    -E hash_seed=6e696d62-7573-4000-8000-000000000002,root_owner=0:0 -m 0 -d "$D" "$W/data.ext4" 1G >/dev/null
# mkfs -d copies each file's ctime, which no tool can set on the host; pin it in the image instead.
(cd "$D" && find . -mindepth 1) | sed 's|^\.||' | while read -r p; do
    E2FSPROGS_FAKE_TIME=1 debugfs -w -R "set_inode_field $p ctime @$((SOURCE_DATE_EPOCH > 0 ? SOURCE_DATE_EPOCH : 1))" \
        "$W/data.ext4" >/dev/null 2>&1
done
qemu-img convert -f raw -O qcow2 "$W/data.ext4" "$W/data.qcow2"
sha=$(sha256sum "$W/data.qcow2" | cut -c1-16)
[ -e "$OUT/disk-$sha.qcow2" ] || mv "$W/data.qcow2" "$OUT/disk-$sha.qcow2"
ln -sfn "disk-$sha.qcow2" "$OUT/base.qcow2"

busybox_version=$("$BUSYBOX" 2>&1 | head -1 | sed -n 's/^BusyBox v\([0-9.]*\).*/\1/p')
# What it was built from: a server whose own build.sh and init differ rebuilds it at start.
recipe=$(cat "$0" "$HERE/init" | sha256sum | cut -c1-64)
checksum=$(cat "$OUT/vmlinux" "$OUT/initrd.img" "$OUT/base.qcow2" | sha256sum | cut -c1-64)
size=$(du -bL "$OUT/vmlinux" "$OUT/initrd.img" "$OUT/base.qcow2" | awk '{s+=$1} END {print s}')
cat > "$W/template.json" <<EOF
{
  "name": "busybox",
  "description": "Minimal busybox guest on the Debian $KVER kernel (direct PVH boot, ext4 data disk, fw_cfg seed)",
  "os_name": "busybox",
  "os_version": "$busybox_version",
  "boot_mode": "kernel",
  "kernel": "vmlinux",
  "initrd": "initrd.img",
  "disk": "disk-$sha.qcow2",
  "cmdline": "console=ttyS0 quiet panic=-1",
  "ready_marker": "READY",
  "min_disk_gb": 1,
  "min_memory_mib": 128,
  "password_enabled": true,
  "ssh_key_enabled": true,
  "default_user": "root",
  "kernel_version": "$KVER",
  "checksum": "sha256:$checksum",
  "recipe": "sha256:$recipe",
  "size_bytes": $size
}
EOF
mv "$W/template.json" "$OUT/template.json"
echo "built busybox template in $OUT (kernel $KVER, disk-$sha.qcow2)"
