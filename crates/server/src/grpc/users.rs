//! `UserService`: registration and public profiles.

use std::sync::Arc;

use chat_proto as pb;
use chat_store::NewUser;
use tonic::{Request, Response, Status};

use super::convert;
use crate::{auth, names, ApiError, AppState};

pub(super) struct UserApi {
    pub state: Arc<AppState>,
}

impl AppState {
    /// Creates a user and returns its profile and its secret (shown once).
    pub async fn register(
        &self,
        username: &str,
        name: &str,
        phone: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<(chat_store::UserProfile, String), ApiError> {
        if let Some(client) = client {
            self.rates
                .register
                .check(&client)
                .map_err(|retry_after| ApiError::RateLimited {
                    what: "registrations",
                    retry_after,
                })?;
        }
        let username = names::normalize_username(username)?;
        let name = names::profile_field("name", name, 64)?;
        let phone = names::profile_field("phone", phone, 32)?;
        let secret = auth::new_secret();
        let profile = self
            .store
            .create_user(NewUser {
                username,
                name,
                phone,
                token_hash: auth::hash_secret(&secret),
            })
            .await
            .map_err(|e| match e {
                chat_store::StoreError::AlreadyExists => {
                    ApiError::AlreadyExists("username is taken".into())
                }
                other => other.into(),
            })?;
        tracing::info!(user = %profile.username, "user registered");
        Ok((profile, secret))
    }

    /// The public profile of `username`.
    pub async fn profile(&self, username: &str) -> Result<chat_store::UserProfile, ApiError> {
        let username =
            names::normalize_username(username).map_err(|_| ApiError::NotFound("user"))?;
        self.store
            .get_user(&username)
            .await?
            .ok_or(ApiError::NotFound("user"))
    }
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
        let (user, old) = self.state.authenticate_token(request.metadata()).await?;
        let secret = self.state.rotate_secret(&user, &old).await?;
        Ok(Response::new(pb::RotateSecretResponse { secret }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let profile = self.state.profile(&request.into_inner().username).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(convert::user(profile)),
        }))
    }
}
