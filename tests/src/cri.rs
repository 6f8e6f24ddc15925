//! The kubelet's side of a node, without a kubelet: a private containerd
//! whose CRI plugin knows the runtime handler `jitsu` (and `runc`), a CNI
//! bridge network in the fixture's namespace, a locally built pause image,
//! and a CRI client speaking to the containerd socket the way the kubelet
//! does. Everything lives in the fixture's network namespace and temp dir.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jitsu_spec::archive::{image_archive, File};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, LinuxContainerConfig, LinuxPodSandboxConfig,
    ListImagesRequest, ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint};

use crate::containerd::Containerd;
use crate::netns::NetNs;

/// containerd's namespace for everything made through CRI.
pub const K8S_NAMESPACE: &str = "k8s.io";
pub const PAUSE_IMAGE: &str = "docker.io/jitsu/pause:test";
/// The pod network: a CNI bridge in the fixture's namespace.
pub const POD_SUBNET: &str = "10.99.0.0/24";

/// The static binaries of `bench/native-http` (`make build`): the pause
/// program of runc pods and the native HTTP server.
pub fn native_binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("JITSU_NATIVE_BINS").map_or_else(
        || {
            crate::root().join(format!(
                "bench/native-http/target/{}-unknown-linux-gnu/release",
                std::env::consts::ARCH
            ))
        },
        PathBuf::from,
    );
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make build` (or set JITSU_NATIVE_BINS)",
        path.display()
    );
    path
}

/// containerd's config for the CRI plugin with the `jitsu` handler, in the
/// format of the containerd under test (version 2 for 1.6, 3 for 2.x).
fn config_toml(dir: &Path) -> String {
    let net = dir.join("net.d");
    if crate::containerd::containerd_major() >= 2 {
        config_v3(&net)
    } else {
        config_v2(&net)
    }
}

/// containerd 1.6's config (version 2), CNI's config in `net`.
pub fn config_v2(net: &Path) -> String {
    format!(
        r#"version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  disable_apparmor = true
  # This machine may not lower oom_score_adj (runc pods fail otherwise).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{net}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.jitsu]
      runtime_type = "io.containerd.jitsu.v1"
      pod_annotations = ["org.jitsu.*"]
      container_annotations = ["org.jitsu.*"]
"#,
        net = net.display()
    )
}

/// containerd 2.x: the CRI plugin is split into images, runtime and the
/// gRPC service.
fn config_v3(net: &Path) -> String {
    format!(
        r#"version = 3
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
[plugins."io.containerd.cri.v1.runtime"]
  disable_apparmor = true
  # This machine may not lower oom_score_adj (runc pods fail otherwise).
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{net}"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.jitsu]
      runtime_type = "io.containerd.jitsu.v1"
      pod_annotations = ["org.jitsu.*"]
      container_annotations = ["org.jitsu.*"]
"#,
        net = net.display()
    )
}

/// A bridge network with addresses from host-local, its state in `dir`.
pub fn cni_conf(dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "jitsu-test",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni-jitsu",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": POD_SUBNET }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": dir.join("cni-ipam"),
            }
        }]
    })
    .to_string()
}

pub struct CriNode {
    pub containerd: Containerd,
    pub cri: CriClient,
}

/// A CRI client, as the kubelet speaks to containerd's socket.
pub struct CriClient {
    pub runtime: tokio::runtime::Runtime,
    pub client: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl std::ops::Deref for CriNode {
    type Target = CriClient;
    fn deref(&self) -> &CriClient {
        &self.cri
    }
}

impl std::ops::DerefMut for CriNode {
    fn deref_mut(&mut self) -> &mut CriClient {
        &mut self.cri
    }
}

impl CriNode {
    pub fn start() -> CriNode {
        let containerd = Containerd::start_with(|dir| {
            std::fs::create_dir_all(dir.join("net.d")).unwrap();
            std::fs::write(dir.join("net.d/10-jitsu-test.conflist"), cni_conf(dir)).unwrap();
            Some(config_toml(dir))
        });
        let cri = CriClient::connect(&containerd.socket);
        let node = CriNode { containerd, cri };
        node.import_pause();
        node
    }

    pub fn ns(&self) -> &NetNs {
        &self.containerd.ns
    }

    fn import_pause(&self) {
        let pause = std::fs::read(native_binary("pause")).unwrap();
        let path = self.containerd.dir.path().join("pause.tar");
        std::fs::write(&path, pause_archive(&pause)).unwrap();
        self.containerd.import(K8S_NAMESPACE, &path);
    }

    /// The pod config the kubelet would send for `name`.
    pub fn pod_config(name: &str, annotations: &[(&str, &str)]) -> PodSandboxConfig {
        CriClient::pod_config(name, annotations)
    }
}

/// The pause image ([`PAUSE_IMAGE`]) around the program `pause`, as an
/// archive for `ctr images import`.
pub fn pause_archive(pause: &[u8]) -> Vec<u8> {
    let files = [File {
        path: "pause",
        mode: 0o755,
        data: pause,
    }];
    image_archive(&files, Default::default(), "/pause", PAUSE_IMAGE).unwrap()
}

impl CriClient {
    /// Connects to the CRI socket of containerd at `socket`.
    pub fn connect(socket: &Path) -> CriClient {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let socket = socket.to_path_buf();
        let channel = runtime
            .block_on(
                Endpoint::from_static("http://[::1]:1").connect_with_connector(tower::service_fn(
                    move |_| {
                        let socket = socket.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(socket).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                        }
                    },
                )),
            )
            .expect("connecting to containerd's CRI");
        CriClient {
            runtime,
            client: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    /// Waits until CRI lists `image` (it learns of imports by events).
    pub fn wait_for_image(&mut self, image: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let listed = self
                .runtime
                .block_on(self.images.list_images(ListImagesRequest::default()))
                .unwrap()
                .into_inner();
            if listed
                .images
                .iter()
                .any(|i| i.repo_tags.iter().any(|t| t == image))
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CRI never saw {image}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pod config the kubelet would send for `name` on `handler`.
    pub fn pod_config(name: &str, annotations: &[(&str, &str)]) -> PodSandboxConfig {
        CriClient::pod_config_in(name, "default", annotations)
    }

    /// As `pod_config`, for a pod in the Kubernetes namespace `namespace`.
    pub fn pod_config_in(
        name: &str,
        namespace: &str,
        annotations: &[(&str, &str)],
    ) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{namespace}-{name}"),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            annotations: pairs(annotations),
            linux: Some(LinuxPodSandboxConfig::default()),
            ..Default::default()
        }
    }

    /// RunPodSandbox; the pod's id.
    pub fn run_pod(
        &mut self,
        config: &PodSandboxConfig,
        handler: &str,
    ) -> Result<String, tonic::Status> {
        let request = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        self.runtime
            .block_on(self.client.run_pod_sandbox(request))
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// CreateContainer of `image` in the pod; the container's id.
    pub fn create_container(
        &mut self,
        pod: &str,
        sandbox: &PodSandboxConfig,
        name: &str,
        image: &str,
        annotations: &[(&str, &str)],
    ) -> Result<String, tonic::Status> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            annotations: pairs(annotations),
            linux: Some(LinuxContainerConfig::default()),
            ..Default::default()
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        };
        self.runtime
            .block_on(self.client.create_container(request))
            .map(|r| r.into_inner().container_id)
    }

    pub fn start_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        let request = StartContainerRequest {
            container_id: id.into(),
        };
        self.runtime
            .block_on(self.client.start_container(request))
            .map(|_| ())
    }

    /// The container's CRI state and, when it has ended, reason and message.
    pub fn container_state(&mut self, id: &str) -> (ContainerState, String) {
        self.try_container_state(id).expect("ContainerStatus")
    }

    /// CRI's ContainerStats of `id`: the working set (bytes) and the CPU
    /// used (nanoseconds), as the kubelet reads them.
    pub fn container_stats(&mut self, id: &str) -> (u64, u64) {
        let request = k8s_cri::v1::ContainerStatsRequest {
            container_id: id.into(),
        };
        let stats = self
            .runtime
            .block_on(self.client.container_stats(request))
            .expect("ContainerStats")
            .into_inner()
            .stats
            .expect("stats");
        let memory = stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .map_or(0, |v| v.value);
        let cpu = stats
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map_or(0, |v| v.value);
        (memory, cpu)
    }

    pub fn try_container_state(
        &mut self,
        id: &str,
    ) -> Result<(ContainerState, String), tonic::Status> {
        let request = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let status = self
            .runtime
            .block_on(self.client.container_status(request))?
            .into_inner()
            .status
            .expect("a status");
        Ok((
            ContainerState::try_from(status.state).unwrap_or(ContainerState::ContainerUnknown),
            format!("{}: {}", status.reason, status.message),
        ))
    }

    /// The pod's IPv4 address, as CNI gave it.
    pub fn pod_ip(&mut self, pod: &str) -> String {
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        };
        let status = self
            .runtime
            .block_on(self.client.pod_sandbox_status(request))
            .unwrap()
            .into_inner();
        status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .expect("the pod has an address")
    }

    /// StopPodSandbox then RemovePodSandbox, as the kubelet ends a pod.
    pub fn remove_pod(&mut self, pod: &str) -> Result<(), tonic::Status> {
        self.runtime.block_on(async {
            self.client
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod.into(),
                })
                .await?;
            self.client
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod.into(),
                })
                .await
                .map(|_| ())
        })
    }

    /// The pods CRI still knows.
    pub fn pods(&mut self) -> Vec<String> {
        self.runtime
            .block_on(
                self.client
                    .list_pod_sandbox(ListPodSandboxRequest::default()),
            )
            .map(|r| r.into_inner().items.into_iter().map(|p| p.id).collect())
            .unwrap_or_default()
    }
}

fn pairs(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Drop for CriNode {
    /// Pods own network namespaces outside the temp dir: end them through
    /// CRI, as the kubelet would, before containerd goes.
    fn drop(&mut self) {
        for pod in self.pods() {
            let _ = self.remove_pod(&pod);
        }
    }
}
