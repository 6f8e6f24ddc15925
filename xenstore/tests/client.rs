//! Our async client against our daemon on a socket.

mod common;

use common::Daemon;
use futures_util::StreamExt;
use jitsu_xenstore::{Client, Limits, XsError};

#[test]
fn many_requests_in_flight_get_their_own_replies() {
    let d = Daemon::start();
    d.block_on(async {
        let c = Client::connect(&d.socket).await.unwrap();
        let writes = (0..200).map(|i| {
            let c = c.clone();
            async move { c.write(&format!("/many/{i}"), i.to_string()).await }
        });
        for r in futures_util::future::join_all(writes).await {
            r.unwrap();
        }
        let reads = (0..200).map(|i| {
            let c = c.clone();
            async move { (i, c.read_string(&format!("/many/{i}")).await.unwrap()) }
        });
        for (i, v) in futures_util::future::join_all(reads).await {
            assert_eq!(v, i.to_string());
        }
        assert_eq!(c.directory("/many").await.unwrap().len(), 200);
        assert!(matches!(
            c.read("/none").await,
            Err(jitsu_xenstore::ClientError::Xs(XsError::NoEnt))
        ));
    });
    d.check();
}

#[test]
fn watches_are_streams() {
    let d = Daemon::start();
    d.block_on(async {
        let c = Client::connect(&d.socket).await.unwrap();
        let mut w = c.watch("/svc").await.unwrap();
        assert_eq!(w.next().await.unwrap().path, "/svc");
        let writer = Client::connect(&d.socket).await.unwrap();
        writer.write("/svc/a", "1").await.unwrap();
        writer.write("/svc/a", "2").await.unwrap();
        writer.rm("/svc").await.unwrap();
        let paths: Vec<String> = w.by_ref().take(4).map(|e| e.path).collect().await;
        assert_eq!(paths, ["/svc", "/svc/a", "/svc/a", "/svc"]);
        w.unwatch().await.unwrap();
    });
}

#[test]
fn transact_retries_until_it_commits() {
    let d = Daemon::with(Limits::default(), true); // strict: every registration conflicts
    d.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..16 {
            let socket = d.socket.clone();
            tasks.push(tokio::spawn(async move {
                let c = Client::connect(&socket).await.unwrap();
                c.transact(|tx| async move {
                    let _ = tx.directory("/jitsu/services").await;
                    tx.write(&format!("/jitsu/services/s{i}/ip"), "x").await?;
                    tx.write(&format!("/jitsu/services/s{i}/state"), "parked")
                        .await
                })
                .await
                .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let c = Client::connect(&d.socket).await.unwrap();
        assert_eq!(c.directory("/jitsu/services").await.unwrap().len(), 16);
    });
    let stats = d.server.with_daemon(|d| d.stats());
    assert_eq!(stats.commits, 16);
    d.check();
}

#[test]
fn a_counter_incremented_by_many_clients_loses_no_update() {
    let d = Daemon::start();
    d.block_on(async {
        let c = Client::connect(&d.socket).await.unwrap();
        c.write("/counter", "0").await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let socket = d.socket.clone();
            tasks.push(tokio::spawn(async move {
                let c = Client::connect(&socket).await.unwrap();
                for _ in 0..10 {
                    c.transact(|tx| async move {
                        let n: u64 = String::from_utf8_lossy(&tx.read("/counter").await?)
                            .parse()
                            .unwrap();
                        tx.write("/counter", (n + 1).to_string()).await
                    })
                    .await
                    .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            c.read_string("/counter").await.unwrap(),
            "80",
            "snapshot isolation keeps every increment"
        );
    });
}

#[test]
fn long_listings_are_read_in_parts() {
    let d = Daemon::start();
    d.block_on(async {
        let c = Client::connect(&d.socket).await.unwrap();
        for i in 0..600 {
            c.mkdir(&format!("/wide/a-rather-long-child-name-{i:04}"))
                .await
                .unwrap();
        }
        let names = c.directory("/wide").await.unwrap();
        assert_eq!(names.len(), 600);
        let tx = c.transaction().await.unwrap();
        assert_eq!(tx.directory("/wide").await.unwrap().len(), 600);
        tx.abort().await.unwrap();
    });
}

/// A daemon that accepts and never answers: each request ends at its
/// deadline with `Timeout`, and the connection stays usable for others.
#[test]
fn a_daemon_that_never_answers_times_requests_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hung.sock");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let hung = tokio::spawn(async move {
            // Holds the connection and reads nothing.
            let (stream, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(stream);
        });
        let client = Client::connect(&path)
            .await
            .unwrap()
            .with_deadline(std::time::Duration::from_millis(200));
        for _ in 0..3 {
            assert!(matches!(
                client.read("/jitsu").await,
                Err(jitsu_xenstore::ClientError::Timeout(_))
            ));
        }
        let transaction = client
            .transact(|tx| async move { tx.read("/jitsu").await })
            .await;
        assert!(
            matches!(transaction, Err(jitsu_xenstore::ClientError::Timeout(_))),
            "{transaction:?}"
        );
        hung.abort();
    });
}
