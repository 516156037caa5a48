#!/usr/bin/env bash
# Runs a script as root inside a throwaway virtual machine (qemu, software emulation, so no /dev/kvm is needed) whose
# kernel has what this machine's kernel lacks: device-mapper (LVM) among others. The guest sees this machine's
# root filesystem over 9p (read-write, as root: the script can read the build output and write its results under
# /tmp) and one blank virtio disk, /dev/vda, of DISK_MB MiB. Used by tests that need such kernel features.
#
# usage: tests/vm/run.sh SCRIPT [DISK_MB]     prints the guest's console; exits with the script's exit code
#                                             (124 when the guest did not finish in VM_TIMEOUT seconds, default 900)
# Needs: qemu-system-x86, linux-image-amd64, busybox-static (scripts/test.sh installs them).
set -euo pipefail
script=$(realpath "$1"); disk_mb=${2:-256}
kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)
[ -n "$kernel" ] || { echo "run.sh: no kernel in /boot (apt-get install linux-image-amd64)" >&2; exit 2; }
version=${kernel#/boot/vmlinuz-}
work=$(mktemp -d /tmp/haven-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT

# An initramfs of busybox and the modules the guest needs, in dependency order.
mkdir -p "$work/root/bin" "$work/root/mods" "$work/root/proc" "$work/root/sys" "$work/root/dev" "$work/root/host"
cp /bin/busybox "$work/root/bin/busybox"
for m in virtio_pci virtio_blk 9pnet_virtio 9p dm_snapshot dm_thin_pool dm_mod ext4 loop; do
  modprobe -S "$version" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' > "$work/modules"
while read -r f; do cp "$f" "$work/root/mods/"; basename "$f"; done < "$work/modules" > "$work/root/mods/order"
cat > "$work/root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod "/mods/$m" 2>/dev/null; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 host /host || echo "vm: the host's root did not mount"
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys; mount -t devtmpfs dev /host/dev; mount -t tmpfs run /host/run
script=$(sed -n 's/.*vmscript=\([^ ]*\).*/\1/p' /proc/cmdline)
chroot /host /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  DM_DISABLE_UDEV=1 /bin/bash "$script" < /dev/null > /dev/console 2>&1
echo "vm-exit=$?" > /dev/console
sync; poweroff -f
INIT
chmod +x "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$work/initrd.gz"
truncate -s "${disk_mb}M" "$work/disk.raw"

timeout "${VM_TIMEOUT:-900}" qemu-system-x86_64 -accel tcg -m 3072 -smp 2 -nographic -no-reboot -nodefaults -serial stdio \
  -kernel "$kernel" -initrd "$work/initrd.gz" -append "console=ttyS0 quiet panic=-1 vmscript=$script" \
  -virtfs local,path=/,mount_tag=host,security_model=passthrough,id=host,multidevs=remap \
  -drive file="$work/disk.raw",if=virtio,format=raw > "$work/console" 2>&1 || { code=$?; cat "$work/console"; exit "$code"; }
tr -d '\r' < "$work/console" | sed -n '/./p'
code=$(tr -d '\r' < "$work/console" | sed -n 's/^vm-exit=\([0-9]*\).*/\1/p' | tail -1)
exit "${code:-125}"
