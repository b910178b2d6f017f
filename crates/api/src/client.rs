//! A blocking client for netd's socket, used by netctl and the CNI plugin (both short-lived
//! processes that make one or two calls, so no async runtime is worth starting).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::http::{self, HttpError};
use super::{
    ApiError, AttachRequest, Attachment, CreateNetwork, ErrorBody, GcRequest, GcResult, Released,
    Status,
};
use netd_core::model::{Endpoint, Network};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// netd is not running or the socket is not reachable.
    #[error("cannot reach netd at {path}: {source}")]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to netd at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("netd sent a malformed answer: {0}")]
    Protocol(String),
    /// netd answered with an error.
    #[error("{0}")]
    Api(ApiError),
}

impl From<HttpError> for ClientError {
    fn from(e: HttpError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(path: impl AsRef<Path>) -> Self {
        Client {
            path: path.as_ref().to_path_buf(),
            timeout: Duration::from_secs(60),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// One request; returns the status and the raw body.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), ClientError> {
        self.raw_overlapped(method, path, body, &mut || {})
    }

    /// [`Client::raw`], running `meanwhile` once the request is sent and before the answer is
    /// read, so the caller's own work overlaps netd's. Not run if the request cannot be sent.
    pub fn raw_overlapped(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        meanwhile: &mut dyn FnMut(),
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let mut stream =
            UnixStream::connect(&self.path).map_err(|source| ClientError::Unreachable {
                path: self.path.clone(),
                source,
            })?;
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        stream
            .write_all(&http::request(method, path, body))
            .map_err(io)?;
        meanwhile();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).map_err(io)?;
        let (head, off) = http::parse_head(&buf, usize::MAX)?.ok_or_else(|| {
            ClientError::Protocol("connection closed before a full answer".into())
        })?;
        let status: u16 = head.first[1]
            .parse()
            .map_err(|_| ClientError::Protocol(format!("bad status {:?}", head.first[1])))?;
        let body = buf[off..].to_vec();
        if body.len() != head.content_length {
            return Err(ClientError::Protocol(format!(
                "body is {} bytes, Content-Length said {}",
                body.len(),
                head.content_length
            )));
        }
        Ok((status, body))
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        self.call_overlapped(method, path, body, &mut || {})
    }

    fn call_overlapped<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<T, ClientError> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ClientError::Protocol(e.to_string()))?,
            None => Vec::new(),
        };
        let (status, answer) = self.raw_overlapped(method, path, &bytes, meanwhile)?;
        if (200..300).contains(&status) {
            serde_json::from_slice(&answer).map_err(|e| ClientError::Protocol(e.to_string()))
        } else {
            match serde_json::from_slice::<ErrorBody>(&answer) {
                Ok(e) => Err(ClientError::Api(e.error)),
                Err(_) => Err(ClientError::Protocol(format!(
                    "status {status}: {}",
                    String::from_utf8_lossy(&answer)
                ))),
            }
        }
    }

    pub fn status(&self) -> Result<Status, ClientError> {
        self.call("GET", "/v1/status", None::<&()>)
    }

    pub fn networks(&self) -> Result<Vec<Network>, ClientError> {
        self.call("GET", "/v1/networks", None::<&()>)
    }

    pub fn network(&self, name: &str) -> Result<Network, ClientError> {
        self.call("GET", &format!("/v1/networks/{name}"), None::<&()>)
    }

    pub fn create_network(&self, req: &CreateNetwork) -> Result<Network, ClientError> {
        self.call("POST", "/v1/networks", Some(req))
    }

    pub fn remove_network(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.call("DELETE", &format!("/v1/networks/{name}"), None::<&()>)
    }

    pub fn endpoints(&self) -> Result<Vec<Endpoint>, ClientError> {
        self.call("GET", "/v1/endpoints", None::<&()>)
    }

    pub fn attach(&self, req: &AttachRequest) -> Result<Attachment, ClientError> {
        self.call("POST", "/v1/endpoints", Some(req))
    }

    /// Like [`Client::attach`], but netd leaves the port mappings out of the answer
    /// (`endpoint.ports` comes back empty): the caller sent them, and with thousands of
    /// mappings echoing them back costs both sides more than the rest of the call. `meanwhile`
    /// runs while netd works on the request (see [`Client::raw_overlapped`]).
    pub fn attach_omitting_ports(
        &self,
        req: &AttachRequest,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<Attachment, ClientError> {
        self.call_overlapped("POST", "/v1/endpoints?ports=omit", Some(req), meanwhile)
    }

    pub fn endpoint(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Attachment, ClientError> {
        self.call(
            "GET",
            &format!("/v1/endpoints/{network}/{container_id}/{ifname}"),
            None::<&()>,
        )
    }

    /// Releases the endpoint; the caller removes the links. Idempotent.
    pub fn detach(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Released, ClientError> {
        let path = format!("/v1/endpoints/{network}/{container_id}/{ifname}");
        self.call("DELETE", &path, None::<&()>)
    }

    /// CNI DEL: releases the endpoint and has netd remove its host veth (and so the
    /// container's end) once it has answered. Idempotent.
    pub fn release(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Released, ClientError> {
        let path = format!("/v1/endpoints/{network}/{container_id}/{ifname}?links=remove");
        self.call("DELETE", &path, None::<&()>)
    }

    pub fn gc(&self, req: &GcRequest) -> Result<GcResult, ClientError> {
        self.call("POST", "/v1/gc", Some(req))
    }
}
