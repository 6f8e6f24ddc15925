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

/// A name belongs to whoever claimed it: another owner can neither claim,
/// publish, update nor remove it, and the owner's own removal frees it.
#[test]
fn a_name_belongs_to_its_owner() {
    let d = Daemon::start();
    d.runtime.block_on(async {
        let c = Client::connect(&d.socket).await.unwrap();
        let first = Service {
            name: "web".into(),
            ip: Some("10.77.0.2".parse().unwrap()),
            state: "parked".into(),
            generation: 1,
            owner: "default/a".into(),
            ..Default::default()
        };
        registry::claim(&c, "web", "default/a", None).await.unwrap();
        registry::claim(&c, "web", "default/a", None)
            .await
            .expect("again, by its owner");
        registry::publish(&c, &first).await.unwrap();
        let second = Service {
            ip: Some("10.77.0.3".parse().unwrap()),
            owner: "default/b".into(),
            ..first.clone()
        };
        let taken = |r: Result<(), registry::RegistryError>| match r {
            Err(registry::RegistryError::Taken { owner, .. }) => owner,
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(
            taken(registry::claim(&c, "web", "default/b", None).await),
            "default/a"
        );
        assert_eq!(taken(registry::publish(&c, &second).await), "default/a");
        let moved = Service {
            state: "running".into(),
            ..second.clone()
        };
        assert_eq!(
            taken(registry::update(&c, &second, &moved).await),
            "default/a"
        );
        assert_eq!(
            taken(registry::remove(&c, "web", "default/b").await),
            "default/a"
        );
        let read = registry::read(&c, "web").await.unwrap().unwrap();
        assert_eq!((read.ip, read.owner.as_str()), (first.ip, "default/a"));

        // Claims racing for a free name: exactly one wins.
        let racers = (0..16).map(|i| {
            let c = c.clone();
            async move {
                registry::claim(&c, "api", &format!("r{i}"), None)
                    .await
                    .is_ok()
            }
        });
        let won = futures_util::future::join_all(racers).await;
        assert_eq!(won.iter().filter(|&&w| w).count(), 1, "{won:?}");

        registry::remove(&c, "web", "default/a").await.unwrap();
        assert_eq!(registry::read(&c, "web").await.unwrap(), None);
        registry::remove(&c, "web", "default/a")
            .await
            .expect("a missing entry is no error");
        registry::claim(&c, "web", "default/b", None)
            .await
            .expect("free again");
        // An update of an entry removed under its owner does not recreate it.
        registry::remove(&c, "web", "default/b").await.unwrap();
        assert!(registry::update(&c, &second, &moved).await.is_err());
        assert!(c.read("/jitsu/services/web").await.is_err());
    });
}
