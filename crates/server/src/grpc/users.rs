//! `UserService`: registration and public profiles.

use std::sync::Arc;

use chat_proto as pb;
use tonic::{Request, Response, Status};

use super::convert;
use crate::AppState;

pub(super) struct UserApi {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl pb::user_service_server::UserService for UserApi {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let client = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        let (profile, secret) = self
            .state
            .accounts
            .register(&req.username, &req.name, &req.phone, client)
            .await?;
        Ok(Response::new(pb::RegisterResponse {
            user: Some(convert::user(profile)),
            secret,
        }))
    }

    async fn rotate_secret(
        &self,
        request: Request<pb::RotateSecretRequest>,
    ) -> Result<Response<pb::RotateSecretResponse>, Status> {
        let (user, old) = self
            .state
            .accounts
            .authenticate_token(request.metadata())
            .await?;
        let secret = self.state.accounts.rotate_secret(&user, &old).await?;
        Ok(Response::new(pb::RotateSecretResponse { secret }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let profile = self
            .state
            .accounts
            .profile(&request.into_inner().username)
            .await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(convert::user(profile)),
        }))
    }
}
