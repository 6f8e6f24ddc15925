//! The registry's operations against our XenStore daemon on a socket.

use std::path::PathBuf;

use jitsu_registry::{self as registry, Service};
use jitsu_xenstore::{Client, Limits, Server};

/// A daemon on a private socket, on a runtime of the test's own.
struct Daemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("xenstored.sock");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(async { jitsu_xenstore::server::bind(&socket) })
            .unwrap();
        runtime.spawn(Server::new(Limits::default(), false).serve(listener));
        Daemon {
            _dir: dir,
            socket,
            runtime,
        }
    }
}

/// Whoever asks, a parked service's boot is requested once per parking:
/// only while it is parked, and only if its generation has not been asked for.
#[test]
fn a_boot_is_requested_once_per_generation() {
    let d = Daemon::start();
    d.runtime.block_on(async {
        let c = Client::connect(&d.socket).await.unwrap();
        let mut service = Service {
            name: "web".into(),
            state: "parked".into(),
            generation: 1,
            ..Default::default()
        };
        registry::publish(&c, &service).await.unwrap();
        let asks = (0..32).map(|_| {
            let c = c.clone();
            async move { registry::request_boot(&c, "web").await.unwrap() }
        });
        let written = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .filter(|&w| w)
            .count();
        assert_eq!(written, 1, "32 lookups at once, one request");
        assert_eq!(
            c.read_string("/jitsu/services/web/boot").await.unwrap(),
            "1"
        );
        assert_eq!(
            c.read_string("/jitsu/services/web/state").await.unwrap(),
            "parked",
            "only the monitor writes the state"
        );
        let old = service.clone();
        service.state = "running".into();
        registry::update(&c, &old, &service).await.unwrap();
        assert!(!registry::request_boot(&c, "web").await.unwrap());
        let old = service.clone();
        service.state = "parked".into();
        service.generation = 2;
        registry::update(&c, &old, &service).await.unwrap();
        assert!(registry::request_boot(&c, "web").await.unwrap());
        assert_eq!(
            c.read_string("/jitsu/services/web/boot").await.unwrap(),
            "2"
        );
        assert!(!registry::request_boot(&c, "gone").await.unwrap_or(false));
        let read = registry::read(&c, "web").await.unwrap().unwrap();
        assert_eq!((read.state.as_str(), read.generation), ("parked", 2));
    });
}
