//! A small CRI client that calls containerd's CRI plugin the way kubelet does (gRPC over the
//! Unix socket, CRI v1), blocking on a private current-thread tokio runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, NetworkConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatus,
    PodSandboxStatusRequest, PortMapping, Protocol, RemovePodSandboxRequest, RunPodSandboxRequest,
    RuntimeConfig, StopPodSandboxRequest, UpdateRuntimeConfigRequest, VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// What a CRI call can take on this (loaded) machine before the test gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A connected CRI runtime-service client.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

/// One published port of a pod: (host port, container port, protocol).
pub type Port = (u16, u16, Protocol);

impl Cri {
    /// Connects to the CRI endpoint at `socket` (containerd's gRPC socket).
    pub fn connect(socket: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let path: PathBuf = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                // The URI is required by tonic but unused: the connector dials the socket.
                Endpoint::try_from("http://[::]:0")
                    .expect("endpoint")
                    .timeout(CALL_TIMEOUT)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let p = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(p).await?,
                            ))
                        }
                    }))
                    .await
            })
            .unwrap_or_else(|e| panic!("CRI connect to {}: {e}", socket.display()));
        Cri {
            rt,
            client: RuntimeServiceClient::new(channel),
        }
    }

    /// `Version`: the runtime's name and version (e.g. `containerd`, `1.6.20~ds1`).
    pub fn version(&mut self) -> (String, String) {
        let c = &mut self.client;
        let v = self
            .rt
            .block_on(c.version(VersionRequest {
                version: "v1".into(),
            }))
            .expect("CRI Version")
            .into_inner();
        (v.runtime_name, v.runtime_version)
    }

    /// `UpdateRuntimeConfig` with the node's pod CIDR, as kubelet sends it.
    pub fn update_pod_cidr(&mut self, cidr: &str) -> Result<(), tonic::Status> {
        let c = &mut self.client;
        self.rt
            .block_on(c.update_runtime_config(UpdateRuntimeConfigRequest {
                runtime_config: Some(RuntimeConfig {
                    network_config: Some(NetworkConfig {
                        pod_cidr: cidr.into(),
                    }),
                }),
            }))
            .map(|_| ())
    }

    /// `RunPodSandbox` of pod `name` (namespace `default`) publishing `ports`; returns the
    /// sandbox ID or the runtime's error (which carries the CNI plugin's message).
    pub fn run_pod(&mut self, name: &str, ports: &[Port]) -> Result<String, tonic::Status> {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            port_mappings: ports
                .iter()
                .map(|&(host, ctr, proto)| PortMapping {
                    protocol: proto as i32,
                    container_port: ctr.into(),
                    host_port: host.into(),
                    host_ip: String::new(),
                })
                .collect(),
            labels: HashMap::from([("app".to_string(), name.to_string())]),
            linux: Some(LinuxPodSandboxConfig::default()),
            ..Default::default()
        };
        let c = &mut self.client;
        self.rt
            .block_on(c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            }))
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// `PodSandboxStatus` of `id`.
    pub fn pod_status(&mut self, id: &str) -> PodSandboxStatus {
        let c = &mut self.client;
        self.rt
            .block_on(c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            }))
            .unwrap_or_else(|e| panic!("CRI PodSandboxStatus {id}: {e}"))
            .into_inner()
            .status
            .expect("status")
    }

    /// The path of the pod's network namespace (inside containerd's mount namespace), from
    /// the verbose PodSandboxStatus: its `info` holds the sandbox's OCI runtime spec.
    pub fn pod_netns_path(&mut self, id: &str) -> PathBuf {
        let c = &mut self.client;
        let info = self
            .rt
            .block_on(c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            }))
            .unwrap_or_else(|e| panic!("CRI PodSandboxStatus {id}: {e}"))
            .into_inner()
            .info;
        let raw = info.get("info").map(String::as_str).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(raw)
            .unwrap_or_else(|e| panic!("verbose info of {id} is not JSON ({e}): {raw}"));
        v["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no network namespace path in the spec of {id}: {raw}"))
    }

    /// The pod's IP as PodSandboxStatus reports it.
    pub fn pod_ip(&mut self, id: &str) -> std::net::IpAddr {
        let st = self.pod_status(id);
        let ip = st.network.map(|n| n.ip).unwrap_or_default();
        ip.parse()
            .unwrap_or_else(|e| panic!("pod {id} has no IP in its status ({ip:?}): {e}"))
    }

    /// `StopPodSandbox` (CNI DEL happens here), then `RemovePodSandbox`.
    pub fn stop_and_remove_pod(&mut self, id: &str) {
        let c = &mut self.client;
        self.rt
            .block_on(c.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .unwrap_or_else(|e| panic!("CRI StopPodSandbox {id}: {e}"));
        self.rt
            .block_on(c.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .unwrap_or_else(|e| panic!("CRI RemovePodSandbox {id}: {e}"));
    }
}
