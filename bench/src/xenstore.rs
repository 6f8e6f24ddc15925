//! XenStore: request latency and throughput, and what the merge rule buys
//! for many services registering at once.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use jitsu_xenstore::{Client, ClientError, Limits, Server};

use crate::stats::{Row, Samples, Unit};

pub fn rows(quick: bool) -> Result<Vec<Row>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let ops = if quick { 2_000 } else { 20_000 };
        let echo = echo_baseline(&dir.path().join("echo.sock"), ops).await?;
        let mut rows = Vec::new();
        for clients in [1, 16] {
            for write in [false, true] {
                rows.push(request_row(dir.path(), clients, write, ops, &echo).await?);
            }
        }
        for n in [8, 32, 128] {
            rows.push(registration_row(dir.path(), n, if quick { 3 } else { 20 }).await?);
        }
        Ok(rows)
    })
}

async fn start(dir: &Path, name: &str, strict: bool) -> Result<(Server, std::path::PathBuf)> {
    let socket = dir.join(name);
    let server = Server::new(Limits::default(), strict);
    let listener = jitsu_xenstore::server::bind(&socket)?;
    tokio::spawn(server.clone().serve(listener));
    Ok((server, socket))
}

/// A 16-byte request and reply over a unix socket between two plain
/// threads, nothing else: the floor under any request over a socket.
async fn echo_baseline(socket: &Path, n: usize) -> Result<Samples> {
    use std::io::{Read, Write};
    let listener = std::os::unix::net::UnixListener::bind(socket)?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = [0u8; 16];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    let mut samples = Samples::new();
    let mut buf = [0u8; 16];
    for i in 0..n + n / 4 {
        let t = Instant::now();
        s.write_all(&buf)?;
        s.read_exact(&mut buf)?;
        if i >= n / 4 {
            samples.push(t.elapsed()); // the first quarter warms up
        }
    }
    drop(s);
    let _ = server.join();
    Ok(samples)
}

async fn request_row(
    dir: &Path,
    clients: usize,
    write: bool,
    ops: usize,
    echo: &Samples,
) -> Result<Row> {
    let name = format!("rw-{clients}-{write}.sock");
    let (_server, socket) = start(dir, &name, false).await?;
    let seed = Client::connect(&socket).await?;
    seed.write("/bench/key", "value").await?;
    let per_client = ops / clients;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let socket = socket.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(&socket).await?;
            let mut samples = Vec::with_capacity(per_client);
            let path = format!("/bench/c{c}");
            for i in 0..per_client {
                let t = Instant::now();
                if write {
                    client.write(&path, i.to_string()).await?;
                } else {
                    client.read("/bench/key").await?;
                }
                samples.push(t.elapsed());
            }
            anyhow::Ok(samples)
        }));
    }
    let mut samples = Samples::new();
    for t in tasks {
        for d in t.await?? {
            samples.push(d);
        }
    }
    let rate = (per_client * clients) as f64 / started.elapsed().as_secs_f64();
    let what = if write { "write" } else { "read" };
    Ok(Row {
        name: format!(
            "XenStore {what}, {clients} client(s): {:.0}k/s",
            rate / 1000.0
        ),
        samples,
        baseline_name: "unix socket round trip".into(),
        baseline: echo.clone(),
        unit: Unit::Time,
    })
}

/// One registration: what a booting service does.
async fn register(client: &Client, name: &str) -> Result<Duration> {
    let t = Instant::now();
    client
        .transact(|tx| {
            let name = name.to_string();
            async move {
                tx.mkdir(&format!("/jitsu/services/{name}")).await?;
                for (key, value) in [
                    ("ip", "10.77.0.2"),
                    ("state", "parked"),
                    ("owner", "bench"),
                    ("boot", ""),
                    ("stats/boots", "0"),
                ] {
                    tx.write(&format!("/jitsu/services/{name}/{key}"), value)
                        .await?;
                }
                tx.directory("/jitsu/services").await?;
                Ok(())
            }
        })
        .await?;
    Ok(t.elapsed())
}

/// `n` clients register at once, `rounds` times, with merge and with
/// `--strict`: time per registration (retries included) and EAGAIN rate.
async fn registration_row(dir: &Path, n: usize, rounds: usize) -> Result<Row> {
    let mut results = Vec::new();
    for strict in [false, true] {
        let (server, socket) = start(dir, &format!("reg-{n}-{strict}.sock"), strict).await?;
        let clients: Vec<Arc<Client>> = {
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(Arc::new(Client::connect(&socket).await?));
            }
            v
        };
        clients[0].mkdir("/jitsu/services").await?;
        let mut samples = Samples::new();
        let mut gave_up = 0;
        let started = Instant::now();
        for round in 0..rounds {
            let tasks: Vec<_> = clients
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let c = c.clone();
                    tokio::spawn(async move { register(&c, &format!("r{round}-s{i}")).await })
                })
                .collect();
            for t in tasks {
                match t.await? {
                    Ok(d) => samples.push(d),
                    // Under --strict a registration can lose every retry.
                    Err(e)
                        if e.downcast_ref::<ClientError>()
                            .is_some_and(|e| matches!(e, ClientError::Contended(_))) =>
                    {
                        gave_up += 1
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let stats = server.with_daemon(|d| d.stats());
        let attempts = stats.commits + stats.conflicts;
        let eagain = 100.0 * stats.conflicts as f64 / attempts.max(1) as f64;
        results.push((samples, stats.commits as f64 / elapsed, eagain, gave_up));
    }
    let (strict, merge) = (
        results.pop().expect("strict"),
        results.pop().expect("merge"),
    );
    Ok(Row {
        name: format!(
            "{n} registering at once: merge {:.0}/s, EAGAIN {:.0}%{}",
            merge.1,
            merge.2,
            gave_up(merge.3)
        ),
        samples: merge.0,
        baseline_name: format!(
            "--strict {:.0}/s, EAGAIN {:.0}%{}",
            strict.1,
            strict.2,
            gave_up(strict.3)
        ),
        baseline: strict.0,
        unit: Unit::Time,
    })
}

fn gave_up(n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(", {n} gave up")
    }
}
