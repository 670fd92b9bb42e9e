//! What the guest is told about itself at boot: hostname, SSH keys, password, network and user-data, the
//! same whichever API created the instance.
//!
//! Two deliveries, chosen by the template's manifest:
//! - **fw_cfg** (the busybox guest): one QEMU fw_cfg file per key under `opt/nimbus/`, from `seed/<key>`.
//!   Only fw_cfg templates get them: a disk image is told through its NoCloud seed alone (but for a rescue
//!   boot, which runs the busybox guest's kernel and initramfs whatever the instance's template).
//! - **NoCloud** (cloud images): `seed.iso`, a `cidata` ISO 9660 disk made by Debian's `cloud-localds`
//!   (cloud-image-utils), which upstream cloud-init reads as its NoCloud datasource:
//!   `meta-data` (instance-id, local-hostname, public-keys: cloud-init gives the keys to the image's default
//!   user), `network-config` (version 2: the static address from Nimbus's IPAM, matched by MAC),
//!   `vendor-data` (a `#cloud-config` with the default user's password: user-data given by the user
//!   overrides it, as on any cloud), and `user-data` exactly as the user gave it (kept in `nocloud/`) (`#cloud-config`, a shell
//!   script, MIME multipart: cloud-init decides).
//!
//! Invariant: seed files are replaced atomically (written aside, then renamed), and rewritten before every
//! boot, so a changed hostname or user-data reaches the next boot; the instance-id is the instance's id, so
//! cloud-init runs its once-per-instance modules once per instance (a snapshot promoted to a template and
//! booted as a new instance gets them again).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::{DriverError, DriverResult, InstanceSpec};

/// `rescue` is set for a rescue boot (the busybox init then runs no user-data and mounts nothing).
pub const FW_CFG_KEYS: &[&str] = &["hostname", "ip", "gateway", "ssh-keys", "password", "user-data", "rescue"];

fn hostname(spec: &InstanceSpec) -> &str {
    if spec.hostname.is_empty() {
        &spec.name
    } else {
        &spec.hostname
    }
}

/// A private file, replaced atomically. Blocking: called inside `spawn_blocking`.
fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    std::io::Write::write_all(&mut f, bytes)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// `seed/<key>` files for fw_cfg; keys without a value have no file.
pub async fn write_fw_cfg(dir: &Path, spec: &InstanceSpec) -> DriverResult<()> {
    let seed = dir.join("seed");
    let mut keys = spec.ssh_keys.join("\n");
    if !keys.is_empty() {
        keys.push('\n');
    }
    let values: Vec<(&'static str, Option<Vec<u8>>)> = vec![
        ("hostname", Some(hostname(spec).as_bytes().to_vec())),
        ("ip", spec.ip_address.as_ref().map(|s| s.as_bytes().to_vec())),
        ("gateway", spec.gateway.as_ref().map(|s| s.as_bytes().to_vec())),
        ("ssh-keys", Some(keys.into_bytes())),
        ("password", spec.password.as_ref().map(|s| s.as_bytes().to_vec())),
        ("user-data", spec.user_data.clone()),
        ("rescue", spec.rescue.then(|| b"1".to_vec())),
    ];
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&seed)?;
        for (key, value) in values {
            match value.filter(|v| !v.is_empty()) {
                Some(v) => write_private(&seed, key, &v)?,
                None => match std::fs::remove_file(seed.join(key)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                },
            }
        }
        Ok(())
    })
    .await
    .map_err(failed)?
    .map_err(failed)
}

/// The fw_cfg files present, as (key, path).
pub async fn fw_cfg_files(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut out = Vec::new();
    for key in FW_CFG_KEYS {
        let f = dir.join("seed").join(key);
        if tokio::fs::try_exists(&f).await.unwrap_or(false) {
            out.push((*key, f));
        }
    }
    out
}

/// The NoCloud documents of an instance, as (file name, content).
pub fn nocloud_documents(spec: &InstanceSpec) -> Vec<(&'static str, Vec<u8>)> {
    let meta = json!({
        "instance-id": spec.id.to_string(),
        "local-hostname": hostname(spec),
        "public-keys": spec.ssh_keys,
    });
    let mut docs = vec![("meta-data", serde_json::to_vec_pretty(&meta).expect("JSON"))];
    let mut vendor = String::from("#cloud-config\n");
    if let Some(pw) = &spec.password {
        // JSON strings are YAML strings: no quoting surprises whatever the password holds.
        vendor.push_str(&format!("password: {}\nchpasswd: {{expire: false}}\n", json!(pw)));
    }
    docs.push(("vendor-data", vendor.into_bytes()));
    if let Some(ip) = &spec.ip_address {
        let mut eth = json!({
            "match": {"macaddress": spec.mac_address.to_ascii_lowercase()},
            "set-name": "eth0",
            "addresses": [ip],
        });
        if let Some(gw) = &spec.gateway {
            eth["gateway4"] = json!(gw);
        }
        let net = json!({"version": 2, "ethernets": {"eth0": eth}});
        docs.push(("network-config", serde_json::to_vec_pretty(&net).expect("JSON")));
    }
    docs.push(("user-data", spec.user_data.clone().unwrap_or_default()));
    docs
}

/// Writes the NoCloud documents to `nocloud/` and makes `seed.iso` from them with cloud-localds.
pub async fn write_nocloud(dir: &Path, spec: &InstanceSpec) -> DriverResult<PathBuf> {
    let seed = dir.join("nocloud");
    let docs = nocloud_documents(spec);
    {
        let seed = seed.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&seed)?;
            for (name, bytes) in &docs {
                write_private(&seed, name, bytes)?;
            }
            Ok(())
        })
        .await
        .map_err(failed)?
        .map_err(failed)?;
    }
    let iso = dir.join("seed.iso");
    let tmp = dir.join("seed.iso.tmp");
    let s = |name: &str| seed.join(name).display().to_string();
    let mut args = vec![format!("--vendor-data={}", s("vendor-data"))];
    if spec.ip_address.is_some() {
        args.push(format!("--network-config={}", s("network-config")));
    }
    args.extend([tmp.display().to_string(), s("user-data"), s("meta-data")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    super::host::run("cloud-localds", &args).await.map_err(|e| {
        if e.contains("No such file") || e.contains("not found") {
            DriverError::Unsupported(format!("{e}: install cloud-image-utils (guest/packages.txt)"))
        } else {
            failed(e)
        }
    })?;
    tokio::fs::rename(&tmp, &iso).await.map_err(failed)?;
    Ok(iso)
}

fn failed(e: impl std::fmt::Display) -> DriverError {
    DriverError::Failed(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn nocloud_carries_the_instance_unchanged() {
        let spec = InstanceSpec {
            id: Uuid::nil(),
            name: "web".into(),
            hostname: "web-1".into(),
            vcpus: 1,
            memory_mib: 512,
            disk_size_gb: 3,
            template: crate::sim::busybox_template(),
            user_data: Some(b"#cloud-config\nruncmd: [touch /x]\n".to_vec()),
            ssh_keys: vec!["ssh-ed25519 AAAA k".into()],
            password: Some("p\"w: x".into()),
            mac_address: "52:54:00:AA:BB:CC".into(),
            ip_address: Some("10.213.0.5/24".into()),
            gateway: Some("10.213.0.1".into()),
            tpm: false,
            secure_boot: false,
            volumes: Vec::new(),
            boot_volume: None,
            rescue: false,
        };
        let docs: std::collections::BTreeMap<_, _> = nocloud_documents(&spec).into_iter().collect();
        assert_eq!(docs["user-data"], b"#cloud-config\nruncmd: [touch /x]\n", "user-data is passed as given");
        let meta: serde_json::Value = serde_json::from_slice(&docs["meta-data"]).unwrap();
        assert_eq!(meta["local-hostname"], "web-1");
        assert_eq!(meta["public-keys"][0], "ssh-ed25519 AAAA k");
        let vendor = String::from_utf8(docs["vendor-data"].clone()).unwrap();
        assert!(vendor.contains(r#"password: "p\"w: x""#), "{vendor}");
        let net: serde_json::Value = serde_json::from_slice(&docs["network-config"]).unwrap();
        assert_eq!(net["ethernets"]["eth0"]["match"]["macaddress"], "52:54:00:aa:bb:cc");
        assert_eq!(net["ethernets"]["eth0"]["gateway4"], "10.213.0.1");
    }
}
