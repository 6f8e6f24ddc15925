//! The `xenstore-rs` crate (a client we did not write; GPL-3.0, so a
//! dev-dependency only) against our daemon, through both its blocking and
//! its tokio client.

mod common;

use common::Daemon;
use futures_util::StreamExt;
use xenstore_rs::tokio::XsTokio;
use xenstore_rs::unix::XsUnix;
use xenstore_rs::{AsyncWatch, AsyncXs, Xs};

// One test: the crate finds the daemon through the process-wide
// XENSTORED_PATH variable, which parallel tests would fight over.
#[test]
fn blocking_and_async_clients_work() {
    let d = Daemon::start();
    std::env::set_var("XENSTORED_PATH", &d.socket);

    let xs = XsUnix::new().expect("connect");
    xs.write("/jitsu/services/web/ip", "10.0.0.2").unwrap();
    xs.write("/jitsu/services/db/ip", "10.0.0.3").unwrap();
    assert_eq!(&*xs.read("/jitsu/services/web/ip").unwrap(), "10.0.0.2");
    let mut names: Vec<String> = xs
        .directory("/jitsu/services")
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["db", "web"]);
    xs.rm("/jitsu/services/db").unwrap();
    assert!(xs.read("/jitsu/services/db/ip").is_err());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let xs = XsTokio::new().await.expect("async connect");
        assert_eq!(
            &*xs.read("/jitsu/services/web/ip").await.unwrap(),
            "10.0.0.2"
        );
        let mut watch = xs.watch("/jitsu/services").await.unwrap();
        assert_eq!(&*watch.next().await.unwrap(), "/jitsu/services");
        xs.write("/jitsu/services/cache/ip", "10.0.0.4")
            .await
            .unwrap();
        let mut seen = Vec::new();
        while seen.last().map(String::as_str) != Some("/jitsu/services/cache/ip") {
            seen.push(watch.next().await.unwrap().to_string());
        }
        assert_eq!(seen, ["/jitsu/services/cache", "/jitsu/services/cache/ip"]);
    });
    d.check();
}
