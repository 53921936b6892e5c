//! Protocol 5 (Terraform 0.12 to 1.x): the same messages as protocol 6 under older
//! method names, each delegating to the protocol 6 implementation.

use tonic::{Request, Response, Status};

use super::{ok, Core, ProviderService};
use crate::diag;
use crate::proto::tfplugin5;
use crate::proto::tfplugin6 as pb;

#[tonic::async_trait]
impl tfplugin5::provider_server::Provider for ProviderService {
    async fn get_schema(
        &self,
        req: Request<pb::get_provider_schema::Request>,
    ) -> Result<Response<pb::get_provider_schema::Response>, Status> {
        pb::provider_server::Provider::get_provider_schema(self, req).await
    }

    async fn prepare_provider_config(
        &self,
        req: Request<tfplugin5::prepare_provider_config::Request>,
    ) -> Result<Response<tfplugin5::prepare_provider_config::Response>, Status> {
        let config = req.into_inner().config;
        let diagnostics = diag::to_proto(Core::validate_provider(config.as_ref()));
        ok(tfplugin5::prepare_provider_config::Response {
            prepared_config: config,
            diagnostics,
        })
    }

    async fn validate_resource_type_config(
        &self,
        req: Request<pb::validate_resource_config::Request>,
    ) -> Result<Response<pb::validate_resource_config::Response>, Status> {
        pb::provider_server::Provider::validate_resource_config(self, req).await
    }

    async fn validate_data_source_config(
        &self,
        req: Request<pb::validate_data_resource_config::Request>,
    ) -> Result<Response<pb::validate_data_resource_config::Response>, Status> {
        pb::provider_server::Provider::validate_data_resource_config(self, req).await
    }

    async fn upgrade_resource_state(
        &self,
        req: Request<pb::upgrade_resource_state::Request>,
    ) -> Result<Response<pb::upgrade_resource_state::Response>, Status> {
        pb::provider_server::Provider::upgrade_resource_state(self, req).await
    }

    async fn configure(
        &self,
        req: Request<pb::configure_provider::Request>,
    ) -> Result<Response<pb::configure_provider::Response>, Status> {
        pb::provider_server::Provider::configure_provider(self, req).await
    }

    async fn read_resource(
        &self,
        req: Request<pb::read_resource::Request>,
    ) -> Result<Response<pb::read_resource::Response>, Status> {
        pb::provider_server::Provider::read_resource(self, req).await
    }

    async fn plan_resource_change(
        &self,
        req: Request<pb::plan_resource_change::Request>,
    ) -> Result<Response<pb::plan_resource_change::Response>, Status> {
        pb::provider_server::Provider::plan_resource_change(self, req).await
    }

    async fn apply_resource_change(
        &self,
        req: Request<pb::apply_resource_change::Request>,
    ) -> Result<Response<pb::apply_resource_change::Response>, Status> {
        pb::provider_server::Provider::apply_resource_change(self, req).await
    }

    async fn import_resource_state(
        &self,
        req: Request<pb::import_resource_state::Request>,
    ) -> Result<Response<pb::import_resource_state::Response>, Status> {
        pb::provider_server::Provider::import_resource_state(self, req).await
    }

    async fn read_data_source(
        &self,
        req: Request<pb::read_data_source::Request>,
    ) -> Result<Response<pb::read_data_source::Response>, Status> {
        pb::provider_server::Provider::read_data_source(self, req).await
    }

    async fn stop(
        &self,
        req: Request<pb::stop_provider::Request>,
    ) -> Result<Response<pb::stop_provider::Response>, Status> {
        pb::provider_server::Provider::stop_provider(self, req).await
    }
}
