//! What instances are made from and where they run: zones, instance types and templates.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zone {
    pub name: String,
    /// Stable small integer id (Gcore's `region_id`).
    pub numeric_id: i64,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceType {
    pub id: Uuid,
    /// `<family>.<size>`, e.g. `standard.small`.
    pub name: String,
    pub family: String,
    pub size: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub gpus: u32,
    pub default_disk_gb: u64,
    pub min_disk_gb: u64,
    pub price_hourly: f64,
    pub price_monthly: f64,
    pub zones: Vec<String>,
    pub authorized: bool,
}

/// Sizes shared by every family: (size, vCPUs, memory MiB), smallest first. Families scale them.
const SIZES: &[(&str, u32, u64)] = &[
    ("micro", 1, 512),
    ("tiny", 1, 1024),
    ("small", 2, 2048),
    ("medium", 2, 4096),
    ("large", 4, 8192),
    ("extra-large", 4, 16384),
    ("huge", 8, 32768),
];

/// The instance types a fresh Nimbus offers. Ids are derived from the name so that they are the same on
/// every server and survive a re-seed.
pub fn default_instance_types(zone: &str) -> Vec<InstanceType> {
    let families: &[(&str, u32, u64, u32, f64)] = &[
        // family, vCPU multiplier, memory multiplier, GPUs, hourly price per vCPU
        ("standard", 1, 1, 0, 0.01),
        ("cpu", 2, 1, 0, 0.012),
        ("memory", 1, 2, 0, 0.015),
        ("gpu", 2, 2, 1, 0.25),
    ];
    let mut out = Vec::new();
    for &(family, cpu_mul, mem_mul, gpus, price) in families {
        for &(size, vcpus, mem) in SIZES {
            if family == "gpu" && matches!(size, "micro" | "tiny") {
                continue;
            }
            let name = format!("{family}.{size}");
            let vcpus = vcpus * cpu_mul;
            let hourly = ((vcpus as f64 * price + (mem * mem_mul) as f64 / 1024.0 * 0.005) * 10000.0).round() / 10000.0;
            out.push(InstanceType {
                id: Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("nimbus.instance-type.{name}").as_bytes()),
                name,
                family: family.into(),
                size: size.into(),
                vcpus,
                memory_mib: mem * mem_mul,
                gpus,
                default_disk_gb: 10,
                min_disk_gb: 1,
                price_hourly: hourly,
                price_monthly: (hourly * 730.0 * 100.0).round() / 100.0,
                zones: vec![zone.to_string()],
                authorized: true,
            });
        }
    }
    out
}

/// A GPU model a GPU instance can carry. An instance of a type with GPUs names one
/// ([`crate::instance::Instance::gpu_model`]); the instance type says how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuModel {
    /// Derived from the codename: the same on every server.
    pub id: Uuid,
    /// Short stable name (`titanv`), what instances refer to.
    pub codename: String,
    pub name: String,
    pub cuda_cores: u32,
    pub memory_gib: u32,
}

impl GpuModel {
    pub fn id_for_codename(codename: &str) -> Uuid {
        Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("nimbus.gpu-model.{codename}").as_bytes())
    }
}

/// The GPU models a fresh Nimbus knows, most CUDA cores first; the first is the default of a GPU instance
/// that names none. (The ones SharedCloud rented out, with NVIDIA's published core counts.)
pub fn default_gpu_models() -> Vec<GpuModel> {
    [
        ("titanv", "Nvidia Titan V 12GB", 5120, 12),
        ("teslak80", "Nvidia Tesla K80 24GB", 4992, 24),
        ("titanxp", "Nvidia Titan Xp 12GB", 3840, 12),
        ("1080_ti", "Nvidia GeForce GTX 1080 Ti 11GB", 3584, 11),
        ("titanx", "Nvidia GeForce GTX Titan X 12GB", 3072, 12),
        ("1080", "Nvidia GeForce GTX 1080 8GB", 2560, 8),
        ("1070", "Nvidia GeForce GTX 1070 8GB", 1920, 8),
        ("1060", "Nvidia GeForce GTX 1060 6GB", 1280, 6),
    ]
    .into_iter()
    .map(|(codename, name, cuda_cores, memory_gib)| GpuModel {
        id: GpuModel::id_for_codename(codename),
        codename: codename.into(),
        name: name.into(),
        cuda_cores,
        memory_gib,
    })
    .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Public,
    Private,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootMode {
    Legacy,
    Uefi,
    /// Direct kernel boot (kernel + initrd given to QEMU).
    Kernel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub id: Uuid,
    /// `None` for public templates registered by the driver or an admin.
    pub project_id: Option<Uuid>,
    pub name: String,
    pub description: String,
    pub os_name: String,
    pub os_version: String,
    pub boot_mode: BootMode,
    pub min_disk_gb: u64,
    pub min_memory_mib: u64,
    pub password_enabled: bool,
    pub ssh_key_enabled: bool,
    pub default_user: String,
    pub visibility: Visibility,
    /// Where the driver finds the template's files (a directory or a URL); opaque to the core.
    pub source: String,
    pub checksum: Option<String>,
    pub size_bytes: u64,
    /// The host that keeps its files, for a template imported or promoted there; `None` for the stock
    /// templates every host offers. Instances of it are placed on that host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Template {
    /// Ids of templates registered by name are derived from the name: the same on every server.
    pub fn id_for_name(name: &str) -> Uuid {
        Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("nimbus.template.{name}").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_small_exists_and_families_scale_within_themselves() {
        let types = default_instance_types("local");
        let small = types.iter().find(|t| t.name == "standard.small").expect("standard.small");
        assert_eq!((small.vcpus, small.memory_mib), (2, 2048));
        assert!(types.iter().filter(|t| t.family == "gpu").all(|t| t.gpus == 1));
        let names: std::collections::HashSet<_> = types.iter().map(|t| &t.name).collect();
        assert_eq!(names.len(), types.len(), "names are unique");
    }

    #[test]
    fn gpu_models_have_stable_ids_and_come_most_cores_first() {
        let models = default_gpu_models();
        assert_eq!(models.len(), 8);
        assert_eq!((models[0].codename.as_str(), models[0].cuda_cores), ("titanv", 5120));
        assert!(models.windows(2).all(|w| w[0].cuda_cores > w[1].cuda_cores));
        assert_eq!(models[0].id, GpuModel::id_for_codename("titanv"));
        assert_eq!(default_gpu_models(), models, "the same on every call");
    }
}
