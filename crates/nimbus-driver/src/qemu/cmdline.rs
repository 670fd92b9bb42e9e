//! The QEMU command line, built in one place from a plain description of the machine: the instances' and
//! the accelerator probe's.
//!
//! Machine: q35 (microvm can hang at boot under TCG on a busy host, see /work/shared/QEMU.md), `-nodefaults`,
//! no display; a serial console on a unix socket with a log file; QMP on a unix socket; virtio disks with
//! serials so that the guest can find them by name; never `-daemonize` (QEMU stays our child) and never
//! `-no-reboot` (it turns a reset into an exit).

use std::path::{Path, PathBuf};

use super::Accel;

/// How the machine boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// QEMU loads the kernel (PVH or bzImage) and initrd itself.
    Kernel { kernel: PathBuf, initrd: Option<PathBuf>, cmdline: String },
    /// SeaBIOS boots the first disk.
    Bios,
    /// OVMF boots the first disk; `vars` is the instance's own copy of the variable store.
    Uefi { code: PathBuf, vars: PathBuf, secure_boot: bool },
}

#[derive(Debug, Clone)]
pub struct Nic {
    pub tap: String,
    pub mac: String,
    /// Run by QEMU once it created the tap (puts it on the bridge).
    pub ifup_script: PathBuf,
}

/// Everything the command line says about a machine.
#[derive(Debug, Clone)]
pub struct Machine {
    pub name: String,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub boot: Boot,
    /// The system disk (qcow2 overlay); none for the probe.
    pub disk: Option<PathBuf>,
    /// A read-only raw disk: the NoCloud seed.
    pub seed_iso: Option<PathBuf>,
    /// fw_cfg files as (key under opt/nimbus/, file).
    pub fw_cfg: Vec<(String, PathBuf)>,
    pub nic: Option<Nic>,
    /// The instance directory holding the sockets, serial log and pidfile; `None`: the serial console goes
    /// to `serial_file` and there is no QMP (the probe).
    pub dir: Option<PathBuf>,
    pub serial_file: Option<PathBuf>,
    /// A unix socket of a running swtpm: the machine gets a TPM 2.0 (CRB).
    pub tpm_socket: Option<PathBuf>,
    /// A virtio-serial port for qemu-guest-agent, on this socket.
    pub agent_socket: Option<PathBuf>,
}

/// QEMU option values are comma-separated; a literal comma is doubled.
pub fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

pub fn args(m: &Machine) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    // TCG's translation cache defaults to 1 GiB and a systemd + Python guest (debian-12) fills it: an idle
    // VM then holds 1.4 GiB. Capped at 256 MiB it holds 0.6 GiB (BENCHMARKS.md), more than twice the VMs
    // per host; the busybox guest's working set (about 46 MiB) is far below the cap.
    let (accel, cpu) = match m.accel {
        Accel::Kvm => ("kvm", "host"),
        _ => ("tcg,tb-size=256", "max"),
    };
    let smp = m.vcpus.max(1).to_string();
    let mem = if m.memory_mib == 0 { 256 } else { m.memory_mib }.to_string();
    let name = format!("{},debug-threads=on", m.name);
    let secure = matches!(m.boot, Boot::Uefi { secure_boot: true, .. });
    // Secure boot needs the variable store protected by SMM, which q35 only emulates when asked.
    let machine = if secure { "q35,smm=on" } else { "q35" };
    push(&["-name", &name, "-accel", accel, "-M", machine, "-cpu", cpu, "-smp", &smp, "-m", &mem]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    match &m.boot {
        Boot::Kernel { kernel, initrd, cmdline } => {
            push(&["-kernel", &kernel.display().to_string(), "-append", cmdline]);
            if let Some(initrd) = initrd {
                push(&["-initrd", &initrd.display().to_string()]);
            }
        }
        Boot::Bios => {}
        Boot::Uefi { code, vars, secure_boot } => {
            if *secure_boot {
                push(&["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            }
            let code = format!("if=pflash,format=raw,unit=0,readonly=on,file={}", opt_path(code));
            let vars = format!("if=pflash,format=raw,unit=1,file={}", opt_path(vars));
            push(&["-drive", &code, "-drive", &vars]);
        }
    }
    match (&m.dir, &m.serial_file) {
        (Some(dir), _) => {
            let p = |name: &str| opt_path(&dir.join(name));
            let serial = format!(
                "socket,id=ser0,path={},server=on,wait=off,logfile={},logappend=on",
                p("serial.sock"),
                p("serial.log")
            );
            push(&["-chardev", &serial, "-serial", "chardev:ser0"]);
            let qmp = format!("socket,id=qmp0,path={},server=on,wait=off", p("qmp.sock"));
            push(&["-chardev", &qmp, "-mon", "chardev=qmp0,mode=control"]);
            push(&["-pidfile", &dir.join("qemu.pid").display().to_string()]);
        }
        (None, Some(file)) => push(&["-serial", &format!("file:{}", file.display())]),
        (None, None) => push(&["-serial", "null"]),
    }
    if let Some(disk) = &m.disk {
        let file = format!("driver=file,filename={},node-name=f0", opt_path(disk));
        push(&["-blockdev", &file, "-blockdev", "driver=qcow2,file=f0,node-name=d0"]);
        // The firmware boots the system disk, never the seed. A directly loaded kernel takes bootindex 0
        // itself (QEMU's linuxboot ROM), so the disk gets none then.
        let dev = if matches!(m.boot, Boot::Kernel { .. }) {
            "virtio-blk-pci,drive=d0,serial=disk0"
        } else {
            "virtio-blk-pci,drive=d0,serial=disk0,bootindex=0"
        };
        push(&["-device", dev]);
    }
    if let Some(iso) = &m.seed_iso {
        let file = format!("driver=file,filename={},node-name=f1,read-only=on", opt_path(iso));
        push(&["-blockdev", &file, "-blockdev", "driver=raw,file=f1,node-name=seed,read-only=on"]);
        push(&["-device", "virtio-blk-pci,drive=seed,serial=cidata"]);
    }
    if m.dir.is_some() {
        push(&["-device", "virtio-rng-pci"]);
    }
    if let Some(nic) = &m.nic {
        let netdev = format!("tap,id=n0,ifname={},script={},downscript=no", nic.tap, opt_path(&nic.ifup_script));
        let dev = format!("virtio-net-pci,netdev=n0,mac={}", nic.mac);
        push(&["-netdev", &netdev, "-device", &dev]);
    }
    for (key, file) in &m.fw_cfg {
        push(&["-fw_cfg", &format!("name=opt/nimbus/{key},file={}", opt_path(file))]);
    }
    if let Some(sock) = &m.tpm_socket {
        let chardev = format!("socket,id=chrtpm,path={}", opt_path(sock));
        push(&["-chardev", &chardev, "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0"]);
    }
    if let Some(sock) = &m.agent_socket {
        let chardev = format!("socket,id=qga0,path={},server=on,wait=off", opt_path(sock));
        push(&["-chardev", &chardev, "-device", "virtio-serial-pci,id=vser0"]);
        push(&["-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(boot: Boot) -> Machine {
        Machine {
            name: "m".into(),
            accel: Accel::Tcg,
            vcpus: 1,
            memory_mib: 512,
            boot,
            disk: Some("/d/disk.qcow2".into()),
            seed_iso: Some("/d/seed.iso".into()),
            fw_cfg: vec![],
            nic: None,
            dir: Some("/d".into()),
            serial_file: None,
            tpm_socket: None,
            agent_socket: None,
        }
    }

    #[test]
    fn option_paths_double_commas() {
        assert_eq!(opt_path(Path::new("/a,b/c")), "/a,,b/c");
    }

    #[test]
    fn secure_boot_gets_smm_and_a_protected_flash() {
        let a = args(&machine(Boot::Uefi { code: "/c".into(), vars: "/d/efivars.fd".into(), secure_boot: true }));
        assert!(a.windows(2).any(|w| w == ["-M", "q35,smm=on"]), "{a:?}");
        assert!(a.iter().any(|s| s == "driver=cfi.pflash01,property=secure,value=on"), "{a:?}");
        let a = args(&machine(Boot::Bios));
        assert!(a.windows(2).any(|w| w == ["-M", "q35"]) && !a.iter().any(|s| s.contains("pflash")), "{a:?}");
    }

    #[test]
    fn the_system_disk_boots_and_the_seed_is_read_only() {
        let a = args(&machine(Boot::Bios)).join(" ");
        assert!(a.contains("virtio-blk-pci,drive=d0,serial=disk0,bootindex=0"), "{a}");
        assert!(a.contains("driver=raw,file=f1,node-name=seed,read-only=on"), "{a}");
    }
}
