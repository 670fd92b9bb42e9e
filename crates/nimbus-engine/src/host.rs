//! What the driver is told about an instance: the one spec every API's instances are built from.

use nimbus_core::instance::Instance;
use nimbus_core::resources::InstancePassword;
use nimbus_core::DomainError;
use nimbus_driver::{BootVolumeSpec, DriverError, DriverResult, InstanceSpec};

use crate::resources::PASSWORD;
use crate::{Engine, Result};

impl Engine {
    /// What the driver needs to build and boot this instance, the same for every API.
    pub(crate) async fn spec(&self, instance: &Instance) -> Result<InstanceSpec> {
        use base64::Engine as _;
        let template = self.template_by_id(instance.template_id).await?;
        let user_data = instance
            .user_data
            .as_deref()
            .map(|b64| base64::engine::general_purpose::STANDARD.decode(b64))
            .transpose()
            .map_err(|e| DomainError::Internal(format!("stored user-data is not base64: {e}")))?;
        let password = self.record_of::<InstancePassword>(PASSWORD, instance.id).await?.map(|(p, _)| p.password);
        let net = crate::network::Network::parse(&self.config.network_cidr)?;
        let attached = self.volumes_of_instance(instance).await?;
        let boot_id = instance.boot_volume.map(|b| b.id);
        let boot_volume = match boot_id {
            None => None,
            Some(id) => {
                let Some(v) = attached.iter().find(|v| v.id == id) else {
                    return Err(DomainError::Internal(format!(
                        "instance {} boots from volume {id}, which is not attached to it",
                        instance.id
                    )));
                };
                // Still `creating`: the create that makes it runs.
                Some(BootVolumeSpec {
                    volume: crate::volumes::spec_of(v),
                    new: v.state == nimbus_core::volume::VolumeState::Creating,
                })
            }
        };
        Ok(InstanceSpec {
            id: instance.id,
            name: instance.name.clone(),
            hostname: instance.hostname.clone(),
            vcpus: instance.vcpus,
            memory_mib: instance.memory_mib,
            disk_size_gb: instance.disk_size_gb,
            template,
            user_data,
            ssh_keys: self.public_keys(instance.project_id, &instance.ssh_keys).await?,
            password,
            mac_address: instance.mac_address.clone(),
            ip_address: instance.ip_addresses.first().map(|a| format!("{a}/{}", net.prefix)),
            gateway: Some(net.gateway()),
            tpm: instance.tpm_enabled,
            secure_boot: instance.secure_boot,
            // What a boot gives the guest beside its disk: its `in-use` volumes, and those the create booting
            // it holds (attached by its `attach-volumes` step, `in-use` at its outcome). Other attaching or
            // detaching ones hold the instance's lock, so no boot runs while a volume is between the two.
            volumes: attached
                .iter()
                .filter(|v| Some(v.id) != boot_id)
                .filter(|v| {
                    v.state == nimbus_core::volume::VolumeState::InUse
                        || (matches!(
                            v.state,
                            nimbus_core::volume::VolumeState::Attaching | nimbus_core::volume::VolumeState::Creating
                        ) && v.lock_operation_id.is_some()
                            && v.lock_operation_id == instance.lock_operation_id)
                })
                .map(crate::volumes::spec_of)
                .collect(),
            boot_volume,
            // A rescued instance booted again by a reboot, a recovery or an evacuation stays in rescue.
            rescue: instance.rescue,
        })
    }

    /// [`Engine::spec`] inside a step: a failure to build it fails the step.
    pub(crate) async fn spec_for_driver(&self, instance: &Instance) -> DriverResult<InstanceSpec> {
        self.spec(instance).await.map_err(|e| DriverError::Failed(e.to_string()))
    }
}
