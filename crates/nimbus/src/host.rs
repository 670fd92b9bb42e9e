//! What runs a host: the driver flags that `nimbus server` (for its own host) and `nimbus agent` share,
//! and building the driver from them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use nimbus_driver::{Driver, QemuConfig, QemuDriver, SimConfig, SimDriver};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum DriverKind {
    /// Real VMs: one QEMU process per instance.
    Qemu,
    /// Simulated host in memory, for tests and scale runs.
    Sim,
}

#[derive(Args, Debug, Clone)]
pub struct DriverArgs {
    #[arg(long, env = "NIMBUS_DRIVER", value_enum, default_value = "qemu")]
    pub driver: DriverKind,
    /// qemu driver: accelerator (auto probes KVM and falls back to TCG).
    #[arg(long, env = "NIMBUS_ACCEL", default_value = "auto")]
    pub accel: String,
    /// qemu driver: the network namespace Nimbus creates for instance networks.
    #[arg(long, env = "NIMBUS_NETNS", default_value = "nimbus")]
    pub netns: String,
    /// qemu driver: the QEMU system emulator to run (a name looked up in PATH, or a path).
    #[arg(long, env = "NIMBUS_QEMU", default_value = "qemu-system-x86_64")]
    pub qemu_binary: String,
    /// qemu driver: the `qemu-img` to make and inspect disks with (a name looked up in PATH, or a path).
    #[arg(long, env = "NIMBUS_QEMU_IMG", default_value = "qemu-img")]
    pub qemu_img: String,
    /// qemu driver: where templates live (one directory each), shared by the servers and agent of this
    /// host. Default: /var/lib/nimbus/templates (as root), outside any data dir. When it holds no template
    /// at start, the stock `busybox` one is built there.
    #[arg(long, env = "NIMBUS_TEMPLATE_DIR")]
    pub template_dir: Option<PathBuf>,
    /// GPUs the host offers, MODEL=COUNT (repeatable), e.g. titanv=2.
    #[arg(long = "host-gpus", value_name = "MODEL=COUNT")]
    pub host_gpus: Vec<String>,
    /// sim driver: delay of every action, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub sim_delay_ms: u64,
    /// sim driver: delay of one action, ACTION=MILLISECONDS (repeatable), e.g. start=3000.
    #[arg(long = "sim-delay", value_name = "ACTION=MS")]
    pub sim_delays: Vec<String>,
    /// sim driver: where the simulated host keeps its VMs (default `<data-dir>/sim-host`). Servers that
    /// stand for one host share it, as they would share a real host's disks.
    #[arg(long)]
    pub sim_state_dir: Option<PathBuf>,
    /// sim driver: fail the next N calls of ACTION, ACTION=N (repeatable), e.g. start=1.
    #[arg(long = "sim-fail", value_name = "ACTION=N")]
    pub sim_failures: Vec<String>,
    /// sim driver: the CPUs the simulated host has (default: plenty).
    #[arg(long, default_value_t = 0)]
    pub sim_vcpus: u32,
    /// sim driver: the memory the simulated host has, in MiB (default: plenty).
    #[arg(long, default_value_t = 0)]
    pub sim_memory_mib: u64,
}

impl DriverArgs {
    /// The GPUs of `--host-gpus`, by model.
    pub fn gpus(&self) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        Ok(SimConfig::parse_pairs(&self.host_gpus).map_err(anyhow::Error::msg)?.into_iter().collect())
    }
}

/// The driver, and the qemu driver again when it is one, for its clean-shutdown duties.
pub async fn build_driver(
    args: &DriverArgs,
    data_dir: &Path,
    network_cidr: &str,
) -> anyhow::Result<(Arc<dyn Driver>, Option<Arc<QemuDriver>>)> {
    match args.driver {
        DriverKind::Sim => {
            let mut config = SimConfig {
                delay: Duration::from_millis(args.sim_delay_ms),
                state_dir: Some(args.sim_state_dir.clone().unwrap_or_else(|| data_dir.join("sim-host"))),
                host_vcpus: args.sim_vcpus,
                host_memory_mib: args.sim_memory_mib,
                ..Default::default()
            };
            for (action, ms) in SimConfig::parse_pairs(&args.sim_delays).map_err(anyhow::Error::msg)? {
                config.action_delays.insert(action, Duration::from_millis(ms));
            }
            for (action, n) in SimConfig::parse_pairs(&args.sim_failures).map_err(anyhow::Error::msg)? {
                config.failures.insert(action, n as u32);
            }
            tracing::warn!("running the sim driver: instances are simulated, no VM boots");
            Ok((Arc::new(SimDriver::new(config)), None))
        }
        DriverKind::Qemu => {
            let network = nimbus_engine::network::Network::parse(network_cidr)
                .map_err(|e| anyhow::anyhow!("--network-cidr: {e}"))?;
            let templates = args.template_dir.clone().unwrap_or_else(crate::guest::default_template_dir);
            // A new cloud is never one without images. And the busybox template's kernel and init are the
            // guest's side of what this server asks (seeds, the agent, the rescue boot): one another version
            // built would quietly not do it. Its disk files are immutable and kept, so the instances made
            // from it keep theirs; they boot the new kernel and init the next time they boot.
            let rebuild = match crate::guest::has_templates(&templates) {
                false => Some("no template found".to_string()),
                true => crate::guest::stale_busybox(&templates),
            };
            if let Some(why) = rebuild {
                tracing::info!(dir = %templates.display(), %why, "building the stock busybox template");
                let dir = templates.clone();
                match tokio::task::spawn_blocking(move || crate::guest::build("busybox", &dir, None)).await? {
                    Ok(()) => tracing::info!("built the busybox template"),
                    Err(e) => tracing::error!(
                        "cannot build the busybox template (see guest/packages.txt; an older one is kept): {e}"
                    ),
                }
            }
            let mut config = QemuConfig::new(data_dir.join("qemu"), templates);
            config.accel = args.accel.parse().map_err(anyhow::Error::msg)?;
            config.netns = args.netns.clone();
            config.qemu_binary = args.qemu_binary.clone();
            config.qemu_img = args.qemu_img.clone();
            config.bridge_cidr = format!("{}/{}", network.gateway(), network.prefix);
            let driver = Arc::new(QemuDriver::new(config).await.map_err(|e| anyhow::anyhow!("qemu driver: {e}"))?);
            if driver.templates().await.map(|t| t.is_empty()).unwrap_or(true) {
                tracing::warn!("no template found; build one with `nimbus template build busybox`");
            }
            Ok((driver.clone(), Some(driver)))
        }
    }
}
