//! Requests to a test server's HTTP API through `reqwest`, the one HTTP
//! client of the workspace, with every answer kept whole (status, headers,
//! raw body) so that tests can check malformed input and exact headers,
//! and its `data` read into the server's own body types
//! (`chat_server::http::types`) where the shape is known.
//!
//! Each request goes on a fresh connection of a fresh client: a test's
//! runtime ends with the test, and no pooled connection outlives it.

use std::net::SocketAddr;

use chat_server::http::types::Envelope;
use serde::de::DeserializeOwned;

use crate::WAIT;

/// An HTTP answer: status, headers and body, the body also parsed as JSON
/// (`Null` if it is not).
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: serde_json::Value,
    pub body: String,
}

impl HttpAnswer {
    /// The envelope's `data` as `T`; fails the test if the answer has
    /// none of that shape.
    pub fn data<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str::<Envelope<T>>(&self.body)
            .unwrap_or_else(|e| panic!("not an envelope of the expected data ({e}): {}", self.body))
            .data
            .unwrap_or_else(|| panic!("an answer without data: {}", self.body))
    }
}

/// One request to `addr`. `body` is sent as `-d` sends it with curl (as a
/// form, whatever it holds): the API reads JSON whatever the content type.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> HttpAnswer {
    http_with(addr, method, path, &[], body).await
}

/// [`http`] with extra request headers, e.g. `("Authorization", "Bearer …")`.
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpAnswer {
    let client = client(reqwest::Client::builder());
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request = client
        .request(method, format!("http://{addr}{path}"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body.unwrap_or_default().to_vec());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    answer(request).await
}

/// [`http_with`] as the holder of `secret` (a user's secret or the admin
/// token), sent as `Authorization: Bearer <secret>`.
pub async fn http_as(
    addr: SocketAddr,
    secret: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> HttpAnswer {
    let bearer = format!("Bearer {secret}");
    http_with(addr, method, path, &[("Authorization", &bearer)], body).await
}

/// A client for one test's requests: bounded by [`WAIT`], no pooled
/// connections, no proxy from the environment (the server is on
/// loopback). `builder` may set more (e.g. a local address).
pub fn client(builder: reqwest::ClientBuilder) -> reqwest::Client {
    builder
        .timeout(WAIT)
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client")
}

/// Sends `request` and reads the whole answer.
pub async fn answer(request: reqwest::RequestBuilder) -> HttpAnswer {
    let response = request.send().await.expect("an HTTP answer in time");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.expect("the whole HTTP body in time");
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    HttpAnswer {
        status,
        headers,
        json,
        body,
    }
}
