//! Clients that misbehave: garbage, oversized messages, vanishing mid-way,
//! and a crowd. The daemon keeps serving and the tree stays consistent.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::Daemon;
use jitsu_xenstore::wire::{Header, Message, MsgType};
use jitsu_xenstore::Client;

fn connect(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn request(s: &mut UnixStream, kind: MsgType, tx: u32, payload: &[u8]) -> Message {
    s.write_all(&Message::new(kind, 42, tx, payload.to_vec()).encode())
        .unwrap();
    read_reply(s)
}

fn read_reply(s: &mut UnixStream) -> Message {
    let mut head = [0u8; 16];
    s.read_exact(&mut head).unwrap();
    let h = Header::parse(&head);
    let mut payload = vec![0; h.len as usize];
    s.read_exact(&mut payload).unwrap();
    Message::new(
        MsgType::from_u32(h.kind).unwrap(),
        h.req_id,
        h.tx_id,
        payload,
    )
}

/// The daemon still answers a fresh client correctly.
fn assert_serving(d: &Daemon) {
    let mut s = connect(d);
    let w = request(&mut s, MsgType::Write, 0, b"/alive\0yes");
    assert_eq!(w.payload, b"OK\0");
    let r = request(&mut s, MsgType::Read, 0, b"/alive\0");
    assert_eq!(r.payload, b"yes");
    d.check();
}

#[test]
fn random_frames_never_break_the_daemon() {
    let d = Daemon::start();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let mut s = connect(&d);
        // Valid headers with random types and payloads, then raw junk.
        let kind = (next() % 30) as u32;
        let len = (next() % 200) as usize;
        let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let header = Header {
            kind,
            req_id: round,
            tx_id: (next() % 3) as u32,
            len: len as u32,
        };
        let _ = s.write_all(&header.to_bytes());
        let _ = s.write_all(&payload);
        let junk: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
        let _ = s.write_all(&junk);
    }
    assert_serving(&d);
}

#[test]
fn oversized_payload_gets_e2big_and_the_connection_stays_usable() {
    let d = Daemon::start();
    let mut s = connect(&d);
    let big = vec![b'a'; 5000];
    let header = Header {
        kind: MsgType::Write as u32,
        req_id: 9,
        tx_id: 0,
        len: big.len() as u32,
    };
    s.write_all(&header.to_bytes()).unwrap();
    s.write_all(&big).unwrap();
    let reply = read_reply(&mut s);
    assert_eq!(
        (reply.kind, reply.req_id, reply.payload.as_slice()),
        (MsgType::Error, 9, &b"E2BIG\0"[..])
    );
    assert_eq!(
        request(&mut s, MsgType::Write, 0, b"/after\0ok").payload,
        b"OK\0"
    );
    // A header claiming gigabytes is not XenStore: the connection is dropped.
    let mut s2 = connect(&d);
    s2.write_all(
        &Header {
            kind: 2,
            req_id: 1,
            tx_id: 0,
            len: u32::MAX,
        }
        .to_bytes(),
    )
    .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(s2.read(&mut byte).unwrap(), 0, "closed");
    assert_serving(&d);
}

#[test]
fn disconnecting_mid_transaction_or_mid_message_leaves_no_trace() {
    let d = Daemon::start();
    {
        let mut s = connect(&d);
        let start = request(&mut s, MsgType::TransactionStart, 0, b"\0");
        let tx: u32 = String::from_utf8_lossy(&start.payload)
            .trim_end_matches('\0')
            .parse()
            .unwrap();
        assert_eq!(
            request(&mut s, MsgType::Write, tx, b"/half/done\0x").payload,
            b"OK\0"
        );
    }
    {
        let mut s = connect(&d);
        let msg = Message::new(MsgType::Write, 1, 0, b"/torn\0value".to_vec()).encode();
        s.write_all(&msg[..msg.len() - 3]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut s = connect(&d);
    assert_eq!(
        request(&mut s, MsgType::Read, 0, b"/half/done\0").payload,
        b"ENOENT\0"
    );
    assert_eq!(
        request(&mut s, MsgType::Read, 0, b"/torn\0").payload,
        b"ENOENT\0"
    );
    assert_serving(&d);
}

#[test]
fn a_hundred_clients_at_once() {
    let d = Daemon::start();
    d.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..100 {
            let socket = d.socket.clone();
            tasks.push(tokio::spawn(async move {
                let c = Client::connect(&socket).await.unwrap();
                let name = format!("svc{i}");
                c.transact(|tx| {
                    let name = name.clone();
                    async move {
                        tx.directory("/jitsu/services").await.ok();
                        for key in ["ip", "state", "owner"] {
                            tx.write(&format!("/jitsu/services/{name}/{key}"), &name)
                                .await?;
                        }
                        Ok(())
                    }
                })
                .await
                .unwrap();
                for _ in 0..20 {
                    assert_eq!(
                        c.read_string(&format!("/jitsu/services/{name}/ip"))
                            .await
                            .unwrap(),
                        name
                    );
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let c = Client::connect(&d.socket).await.unwrap();
        assert_eq!(c.directory("/jitsu/services").await.unwrap().len(), 100);
    });
    assert_serving(&d);
}

#[test]
fn a_client_that_never_reads_is_cut_off_without_hurting_others() {
    let limits = jitsu_xenstore::Limits {
        outbox_per_conn: 64,
        ..Default::default()
    };
    let d = Daemon::with(limits, false);
    let mut lazy = connect(&d);
    lazy.set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let read = Message::new(MsgType::Read, 1, 0, b"/\0".to_vec()).encode();
    // Far more replies than the outbox and the socket buffers hold.
    for _ in 0..100_000 {
        if lazy.write_all(&read).is_err() {
            break;
        }
    }
    assert_serving(&d);
}
