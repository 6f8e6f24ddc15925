//! The shim v2 task service: containerd's calls, mapped onto containers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::protos::api;
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::{Config, Error, Flags, StartOpts, TtrpcResult};
use tokio::sync::Mutex;

use crate::bundle::{self, BundleSpec, Role};
use crate::container::{self, Container, Placement, Status};
use crate::image;
use crate::state::{ContainerKey, Record};

#[derive(Clone)]
pub struct Service {
    id: String,
    /// Our ttrpc socket (`unix:///run/containerd/s/...`).
    socket: String,
    /// containerd's socket, which names ours.
    containerd_address: String,
    namespace: String,
    exit: Arc<ExitSignal>,
    containers: Arc<Mutex<HashMap<String, Container>>>,
    publisher: Option<Arc<RemotePublisher>>,
}

/// The annotation that names a unikernel in the node's DNS zone.
const DNS_NAME_ANNOTATION: &str = "org.jitsu.dns-name";

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn unsupported(what: &str) -> ttrpc::Error {
    status(
        Code::UNIMPLEMENTED,
        format!("{what} is not supported for unikernels"),
    )
}

fn not_found(id: &str) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("container {id} not found"))
}

/// Removes the shim socket at `address` (`unix:///run/containerd/s/...`).
fn remove_socket(address: &str) {
    let path = Path::new(address.trim().trim_start_matches("unix://"));
    if path.starts_with(containerd_shim::SOCKET_ROOT) {
        let _ = std::fs::remove_file(path);
    }
}

fn timestamp(at: SystemTime) -> Timestamp {
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

impl Service {
    /// Container `id` of this shim's containerd and namespace.
    fn key(&self, id: &str) -> ContainerKey {
        ContainerKey {
            containerd: self.containerd_address.clone(),
            namespace: self.namespace.clone(),
            id: id.to_string(),
        }
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Some(publisher) = &self.publisher {
            let ctx = containerd_shim::Context::default();
            if let Err(e) = publisher.publish(ctx, topic, &self.namespace, event).await {
                tracing::warn!(%e, topic, "publishing an event");
            }
        }
    }

    /// Publishes the task's exit when its monitor ends.
    fn watch_exit(
        &self,
        id: String,
        pid: u32,
        mut exit: tokio::sync::watch::Receiver<container::Exit>,
    ) {
        let service = self.clone();
        tokio::spawn(async move {
            let exited = exit
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|done| *done);
            let Some((code, at)) = exited else { return };
            if let Some(c) = service.containers.lock().await.get_mut(&id) {
                c.status = Status::Stopped;
            }
            let event = TaskExit {
                container_id: id.clone(),
                id,
                pid,
                exit_status: code,
                exited_at: Some(timestamp(at)).into(),
                ..Default::default()
            };
            service
                .publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event))
                .await;
        });
    }
}

impl Service {
    /// The network namespace of a pod's container: its sandbox's (which this
    /// shim knows by its path, unlike `/proc/<pid>/ns/net` it outlives the
    /// sandbox process), else what the spec names.
    async fn pod_netns(&self, spec: &BundleSpec) -> Option<PathBuf> {
        let containers = self.containers.lock().await;
        spec.sandbox_id
            .as_ref()
            .and_then(|sandbox| containers.get(sandbox)?.sandbox_netns().cloned())
            .or_else(|| spec.netns.clone())
    }

    async fn create_task(
        &self,
        req: &api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let bundle = PathBuf::from(&req.bundle);
        let spec = BundleSpec::read(&bundle)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("the bundle: {e}")))?;
        let stdio = (req.stdout.as_str(), req.stderr.as_str());
        let c = match spec.role {
            Role::Sandbox => {
                let cgroup = spec.cgroups_path.as_deref();
                Container::create_sandbox(self.key(&req.id), &bundle, spec.netns, cgroup, stdio)
                    .await
            }
            Role::Unikernel => {
                let netns = self.pod_netns(&spec).await;
                self.create_unikernel(req, &bundle, &spec, netns).await?
            }
        }
        .map_err(|e| status(Code::INTERNAL, e))?;
        let pid = c.pid;
        tracing::info!(id = %req.id, ip = ?c.record.network.ip(), pid, "created");
        self.watch_exit(req.id.clone(), pid, c.exit.clone());
        self.containers.lock().await.insert(req.id.clone(), c);
        let event = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// Mounts the image, reads its unikernel spec and parks the unikernel.
    async fn create_unikernel(
        &self,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        spec: &BundleSpec,
        netns: Option<PathBuf>,
    ) -> TtrpcResult<Result<Container, String>> {
        let rootfs = bundle.join("rootfs");
        let mut mounted = false;
        for m in &req.rootfs {
            std::fs::create_dir_all(&rootfs)
                .map_err(|e| status(Code::INTERNAL, format!("{}: {e}", rootfs.display())))?;
            containerd_shim::asynchronous::util::mount_rootfs(m, &rootfs)
                .await
                .map_err(|e| status(Code::INTERNAL, format!("mounting the rootfs: {e}")))?;
            mounted = true;
        }
        let unikernel = match image::open(&rootfs, &spec.annotations) {
            Ok(mut unikernel) => {
                // A pod's replicas share their image, and with it its DNS
                // name; in Kubernetes a name is the pod's own choice.
                if spec.sandbox_id.is_some() && !spec.annotations.contains_key(DNS_NAME_ANNOTATION)
                {
                    unikernel.spec.dns_name = None;
                }
                unikernel
            }
            Err(e) => {
                if mounted {
                    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
                }
                return Err(status(
                    Code::INVALID_ARGUMENT,
                    format!("not a usable unikernel image: {e}"),
                ));
            }
        };
        let stdio = (req.stdout.as_str(), req.stderr.as_str());
        let cgroup = spec.cgroups_path.as_deref();
        let key = self.key(&req.id);
        let place = Placement {
            netns,
            pod_namespace: spec.pod_namespace.as_deref(),
            cgroups_path: cgroup,
        };
        Ok(Container::create(key, bundle, unikernel, mounted, place, stdio).await)
    }
}

#[async_trait]
impl Shim for Service {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            id: args.id.clone(),
            socket: args.socket.clone(),
            containerd_address: args.address.clone(),
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
            containers: Arc::default(),
            publisher: None,
        }
    }

    /// containerd runs `shim start` in the bundle: every container of a
    /// namespace goes to one shim (see [`bundle::grouping`]). The shim's
    /// address is also left in the bundle's `address` file: a containerd
    /// that restarts finds its shims there, and without it would take their
    /// tasks for dead and delete them.
    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let bundle = std::env::current_dir().unwrap_or_default();
        let address = spawn(opts, bundle::grouping(), Vec::new()).await?;
        let temporary = bundle.join("address.new");
        std::fs::write(&temporary, &address)
            .and_then(|()| std::fs::rename(&temporary, bundle.join("address")))
            .map_err(|e| {
                Error::Other(format!(
                    "writing the shim address in {}: {e}",
                    bundle.display()
                ))
            })?;
        Ok(address)
    }

    /// containerd's word that container `id` is gone for it (after its
    /// shim died, or its connection to the shim closed, or a normal delete):
    /// undo whatever of the container is left. The shim's socket goes only
    /// if no shim answers on it: the shim is shared by the namespace, and a
    /// live one serves other containers.
    async fn delete_shim(&mut self) -> Result<api::DeleteResponse, Error> {
        if let Some(record) = Record::load(&self.key(&self.id)) {
            record.clean_up().await;
        }
        let socket = containerd_shim::socket_address(
            &self.containerd_address,
            &self.namespace,
            bundle::grouping(),
        );
        let path = socket.trim().trim_start_matches("unix://").to_string();
        if std::os::unix::net::UnixStream::connect(&path).is_err() {
            remove_socket(&socket);
        }
        Ok(api::DeleteResponse {
            exit_status: 137,
            exited_at: Some(timestamp(SystemTime::now())).into(),
            ..Default::default()
        })
    }

    /// Ends the shim. The socket goes too: containerd has removed the
    /// bundle, where the shim library looks for the socket's address.
    async fn wait(&mut self) {
        self.exit.wait().await;
        remove_socket(&self.socket);
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let mut service = self.clone();
        service.publisher = Some(Arc::new(publisher));
        service
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let created = self.create_task(&req).await;
        if let Err(e) = &created {
            tracing::warn!(id = %req.id, error = %e, "create refused");
        }
        created
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        if !req.exec_id.is_empty() {
            return Err(unsupported("exec"));
        }
        let (pid, eager) = {
            let containers = self.containers.lock().await;
            let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            (c.pid, c.eager.then(|| c.control.clone()))
        };
        // Not under the lock: a pod's other containers share this shim.
        if let Some(control) = eager {
            container::boot(control)
                .await
                .map_err(|e| status(Code::INTERNAL, e))?;
        }
        if let Some(c) = self.containers.lock().await.get_mut(&req.id) {
            c.status = Status::Running;
        }
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let containers = self.containers.lock().await;
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let exit = c.exit_now();
        let task_status = match (c.status, exit) {
            (_, Some(_)) | (Status::Stopped, _) => api::Status::STOPPED,
            (Status::Created, None) => api::Status::CREATED,
            (Status::Running, None) => api::Status::RUNNING,
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.record.bundle.display().to_string(),
            pid: c.pid,
            status: task_status.into(),
            stdout: c.stdout.clone(),
            stderr: c.stderr.clone(),
            exit_status: exit.map_or(0, |e| e.0),
            exited_at: exit.map(|e| timestamp(e.1)).into(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let containers = self.containers.lock().await;
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        if c.exit_now().is_some() {
            return Ok(api::Empty::new());
        }
        let signal = nix::sys::signal::Signal::try_from(req.signal as i32)
            .map_err(|_| status(Code::INVALID_ARGUMENT, format!("signal {}", req.signal)))?;
        // Through a pidfd checked against the start time: never a stranger
        // that was given the pid after ours ended.
        if let Some(process) = &c.record.process {
            process
                .signal(signal)
                .map_err(|e| status(Code::INTERNAL, format!("kill: {e}")))?;
        }
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let mut exit = {
            let containers = self.containers.lock().await;
            containers
                .get(&req.id)
                .ok_or_else(|| not_found(&req.id))?
                .exit
                .clone()
        };
        let exited = exit
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|done| *done);
        let (code, at) = exited.ok_or_else(|| status(Code::INTERNAL, "monitor lost"))?;
        Ok(api::WaitResponse {
            exit_status: code,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            return Err(unsupported("exec"));
        }
        let c = self
            .containers
            .lock()
            .await
            .remove(&req.id)
            .ok_or_else(|| not_found(&req.id))?;
        let exit = c.exit_now();
        c.record.clean_up().await;
        let (code, at) = exit.unwrap_or((137, SystemTime::now()));
        let event = TaskDelete {
            container_id: req.id.clone(),
            pid: c.pid,
            exit_status: code,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(api::DeleteResponse {
            pid: c.pid,
            exit_status: code,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let containers = self.containers.lock().await;
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let process = api::ProcessInfo {
            pid: c.pid,
            ..Default::default()
        };
        Ok(api::PidsResponse {
            processes: vec![process],
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let containers = self.containers.lock().await;
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let Some(cgroup) = &c.record.cgroup else {
            return Err(status(
                Code::UNAVAILABLE,
                "no cgroup on this host: no metrics",
            ));
        };
        let stats = cgroup.metrics().map_err(|e| status(Code::INTERNAL, e))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let containers = self.containers.lock().await;
        let task_pid = containers.get(&req.id).map_or(0, |c| c.pid);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: "jitsu-1".into(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        if self.containers.lock().await.is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        Ok(api::Empty::new()) // the unikernel reads no stdin
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unsupported("exec"))
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Err(unsupported("pause"))
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unsupported("resume"))
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unsupported("checkpoint"))
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        _req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unsupported("update"))
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        Ok(api::Empty::new()) // no terminal
    }
}
