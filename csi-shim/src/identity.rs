//! The Identity service: the plugin's name and version, what it offers, and whether it is
//! ready (a controller is ready once the MDS answers).

use std::sync::Arc;

use shoal_client::Client;
use shoal_proto::csi::identity_server::Identity;
use shoal_proto::csi::plugin_capability::VolumeExpansion;
use shoal_proto::csi::plugin_capability::{service, volume_expansion, Service, Type};
use shoal_proto::csi::*;
use tonic::{Request, Response, Status};

use crate::DRIVER_NAME;

/// Identity, for a plugin that runs the controller service, the node service, or both.
pub struct IdentityService {
    /// The cluster, when this plugin runs the controller (Probe asks it).
    pub controller: Option<Arc<Client>>,
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _r: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: [("filesystem".to_string(), "shoal".to_string())].into(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _r: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let service = PluginCapability {
            r#type: Some(Type::Service(Service {
                r#type: service::Type::ControllerService as i32,
            })),
        };
        let expansion = PluginCapability {
            r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                r#type: volume_expansion::Type::Online as i32,
            })),
        };
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: vec![service, expansion],
        }))
    }

    async fn probe(&self, _r: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let ready = match &self.controller {
            Some(c) => c.statfs(0).await.is_ok(),
            None => true,
        };
        Ok(Response::new(ProbeResponse { ready: Some(ready) }))
    }
}
