//! A daemon on a private socket, served from a runtime of its own so that
//! blocking clients (Xen's tools, std sockets) can talk to it from the test.

#![allow(dead_code)]

use std::path::PathBuf;

use jitsu_xenstore::{Limits, Server};

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub server: Server,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::with(Limits::default(), false)
    }

    pub fn with(limits: Limits, strict: bool) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("xenstored.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = Server::new(limits, strict);
        let listener = runtime
            .block_on(async { jitsu_xenstore::server::bind(&socket) })
            .unwrap();
        runtime.spawn(server.clone().serve(listener));
        Daemon {
            dir,
            socket,
            server,
            runtime: Some(runtime),
        }
    }

    /// Fails the test if the tree is inconsistent.
    pub fn check(&self) {
        self.server.with_daemon(|d| d.store().check()).unwrap();
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.as_ref().unwrap().block_on(f)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
