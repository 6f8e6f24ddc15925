//! The daemon's semantics, request by request, without sockets.

use jitsu_xenstore::daemon::{ConnId, Daemon};
use jitsu_xenstore::wire::{split_strings, Frame, Header, Message, MsgType};
use jitsu_xenstore::Limits;

struct Harness {
    d: Daemon,
}

struct Reply {
    msg: Message,
    /// Watch events, as (connection, path, token).
    events: Vec<(ConnId, String, String)>,
}

impl Reply {
    fn ok(&self) -> &Self {
        assert_ne!(
            self.msg.kind,
            MsgType::Error,
            "unexpected error {:?}",
            self.text()
        );
        self
    }

    fn err(&self) -> String {
        assert_eq!(
            self.msg.kind,
            MsgType::Error,
            "expected an error, got {:?}",
            self.text()
        );
        self.text().trim_end_matches('\0').to_string()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.msg.payload).into_owned()
    }

    fn strings(&self) -> Vec<String> {
        split_strings(&self.msg.payload)
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }
}

fn payload(parts: &[&str]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.bytes().chain([0])).collect()
}

impl Harness {
    fn new() -> Harness {
        Harness::with(Limits::default(), false)
    }

    fn with(limits: Limits, strict: bool) -> Harness {
        Harness {
            d: Daemon::new(limits, strict),
        }
    }

    fn raw(&mut self, conn: ConnId, kind: u32, tx: u32, payload: Vec<u8>) -> Reply {
        let header = Header {
            kind,
            req_id: 7,
            tx_id: tx,
            len: payload.len() as u32,
        };
        let mut out = self.d.handle(conn, Frame { header, payload }).into_iter();
        let (to, msg) = out.next().expect("a reply");
        assert_eq!(to, conn);
        assert_eq!(msg.req_id, 7, "the reply echoes req_id");
        let events = out
            .map(|(c, m)| {
                assert_eq!(m.kind, MsgType::WatchEvent);
                let s = split_strings(&m.payload);
                (
                    c,
                    String::from_utf8_lossy(s[0]).into_owned(),
                    String::from_utf8_lossy(s[1]).into_owned(),
                )
            })
            .collect();
        Reply { msg, events }
    }

    fn call(&mut self, conn: ConnId, kind: MsgType, tx: u32, parts: &[&str]) -> Reply {
        self.raw(conn, kind as u32, tx, payload(parts))
    }

    fn write(&mut self, conn: ConnId, tx: u32, path: &str, value: &str) -> Reply {
        let mut p = payload(&[path]);
        p.extend_from_slice(value.as_bytes());
        self.raw(conn, MsgType::Write as u32, tx, p)
    }

    fn start(&mut self, conn: ConnId) -> u32 {
        let r = self.call(conn, MsgType::TransactionStart, 0, &[""]);
        r.ok().strings()[0].parse().unwrap()
    }

    fn end(&mut self, conn: ConnId, tx: u32) -> Reply {
        self.call(conn, MsgType::TransactionEnd, tx, &["T"])
    }

    fn check(&self) {
        self.d.store().check().unwrap();
    }
}

#[test]
fn read_write_directory_and_implicit_parents() {
    let mut h = Harness::new();
    let c = h.d.connect();
    h.write(c, 0, "/jitsu/services/web/ip", "10.0.0.2").ok();
    assert_eq!(
        h.call(c, MsgType::Read, 0, &["/jitsu/services/web/ip"])
            .ok()
            .text(),
        "10.0.0.2"
    );
    assert_eq!(
        h.call(c, MsgType::Read, 0, &["/jitsu/services"])
            .ok()
            .text(),
        ""
    );
    assert_eq!(
        h.call(c, MsgType::Directory, 0, &["/jitsu/services"])
            .ok()
            .strings(),
        ["web"]
    );
    assert_eq!(h.call(c, MsgType::Read, 0, &["/nope"]).err(), "ENOENT");
    assert_eq!(
        h.call(c, MsgType::Mkdir, 0, &["/jitsu/services/web"])
            .ok()
            .text(),
        "OK\0"
    );
    assert_eq!(
        h.call(c, MsgType::Read, 0, &["/jitsu/services/web/ip"])
            .ok()
            .text(),
        "10.0.0.2",
        "MKDIR keeps values"
    );
    h.call(c, MsgType::Rm, 0, &["/jitsu/services/web"]).ok();
    assert_eq!(
        h.call(c, MsgType::Directory, 0, &["/jitsu/services"])
            .ok()
            .strings(),
        Vec::<String>::new()
    );
    assert_eq!(
        h.call(c, MsgType::GetDomainPath, 0, &["5"]).ok().strings(),
        ["/local/domain/5"]
    );
    assert_eq!(h.call(c, MsgType::Read, 0, &["/bad//path"]).err(), "EINVAL");
    h.check();
}

#[test]
fn values_may_hold_any_bytes() {
    let mut h = Harness::new();
    let c = h.d.connect();
    let mut p = payload(&["/bin"]);
    p.extend_from_slice(b"a\0b\xff");
    h.raw(c, MsgType::Write as u32, 0, p).ok();
    assert_eq!(
        h.call(c, MsgType::Read, 0, &["/bin"]).msg.payload,
        b"a\0b\xff"
    );
}

#[test]
fn permissions_round_trip() {
    let mut h = Harness::new();
    let c = h.d.connect();
    h.write(c, 0, "/p", "").ok();
    h.call(c, MsgType::SetPerms, 0, &["/p", "r3", "b4"]).ok();
    assert_eq!(
        h.call(c, MsgType::GetPerms, 0, &["/p"]).ok().strings(),
        ["r3", "b4"]
    );
    assert_eq!(
        h.call(c, MsgType::SetPerms, 0, &["/p", "q3"]).err(),
        "EINVAL"
    );
    assert_eq!(h.call(c, MsgType::SetPerms, 0, &["/p"]).err(), "EINVAL");
}

#[test]
fn unknown_type_is_einval_and_the_connection_goes_on() {
    let mut h = Harness::new();
    let c = h.d.connect();
    assert_eq!(h.raw(c, 999, 0, payload(&["x"])).err(), "EINVAL");
    assert_eq!(
        h.raw(c, MsgType::WatchEvent as u32, 0, payload(&["/a", "t"]))
            .err(),
        "EINVAL"
    );
    h.write(c, 0, "/still", "fine").ok();
}

#[test]
fn watches_fire_when_set_and_on_changes_below() {
    let mut h = Harness::new();
    let (a, b) = (h.d.connect(), h.d.connect());
    let set = h.call(a, MsgType::Watch, 0, &["/jitsu", "tok"]);
    set.ok();
    assert_eq!(
        set.events,
        vec![(a, "/jitsu".into(), "tok".into())],
        "fires once when set"
    );
    let w = h.write(b, 0, "/jitsu/services/x/ip", "1");
    let paths: Vec<&str> = w.events.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/jitsu",
            "/jitsu/services",
            "/jitsu/services/x",
            "/jitsu/services/x/ip"
        ]
    );
    assert!(w.events.iter().all(|(c, _, t)| *c == a && t == "tok"));
    assert!(
        h.write(b, 0, "/other", "1").events.is_empty(),
        "outside the watch"
    );
    // A watch below a removed subtree hears about it with its own path.
    h.call(a, MsgType::Watch, 0, &["/jitsu/services/x/ip", "deep"])
        .ok();
    let rm = h.call(b, MsgType::Rm, 0, &["/jitsu/services"]);
    assert!(rm
        .events
        .contains(&(a, "/jitsu/services".into(), "tok".into())));
    assert!(rm
        .events
        .contains(&(a, "/jitsu/services/x/ip".into(), "deep".into())));
    h.call(a, MsgType::Unwatch, 0, &["/jitsu", "tok"]).ok();
    assert_eq!(
        h.call(a, MsgType::Unwatch, 0, &["/jitsu", "tok"]).err(),
        "ENOENT"
    );
    assert!(h.write(b, 0, "/jitsu/y", "1").events.is_empty());
    assert_eq!(
        h.call(a, MsgType::Watch, 0, &["/jitsu/services/x/ip", "deep"])
            .err(),
        "EEXIST"
    );
    h.call(a, MsgType::ResetWatches, 0, &[""]).ok();
    assert!(h.write(b, 0, "/jitsu/services/x/ip", "2").events.is_empty());
}

#[test]
fn relative_watches_report_relative_paths() {
    let mut h = Harness::new();
    let c = h.d.connect();
    h.call(c, MsgType::Watch, 0, &["device", "rel"]).ok();
    let w = h.write(c, 0, "/local/domain/0/device/vif", "x");
    assert!(
        w.events
            .iter()
            .any(|(_, p, t)| p == "device/vif" && t == "rel"),
        "{:?}",
        w.events
    );
}

#[test]
fn transaction_changes_are_invisible_until_commit_and_then_fire() {
    let mut h = Harness::new();
    let (a, b) = (h.d.connect(), h.d.connect());
    h.call(b, MsgType::Watch, 0, &["/t", "w"]).ok();
    let tx = h.start(a);
    let w = h.write(a, tx, "/t/x", "1");
    assert!(w.ok().events.is_empty(), "no events before commit");
    assert_eq!(h.call(b, MsgType::Read, 0, &["/t/x"]).err(), "ENOENT");
    assert_eq!(
        h.call(a, MsgType::Read, tx, &["/t/x"]).ok().text(),
        "1",
        "the transaction sees its own write"
    );
    let end = h.end(a, tx);
    end.ok();
    assert!(end.events.iter().any(|(c, p, _)| *c == b && p == "/t/x"));
    assert_eq!(h.call(b, MsgType::Read, 0, &["/t/x"]).ok().text(), "1");
    assert_eq!(
        h.end(a, tx).err(),
        "ENOENT",
        "a finished transaction is gone"
    );
    // Abort discards.
    let tx = h.start(a);
    h.write(a, tx, "/t/y", "1").ok();
    h.call(a, MsgType::TransactionEnd, tx, &["F"]).ok();
    assert_eq!(h.call(a, MsgType::Read, 0, &["/t/y"]).err(), "ENOENT");
}

#[test]
fn a_changed_read_makes_the_commit_fail_with_eagain() {
    let mut h = Harness::new();
    let (a, b) = (h.d.connect(), h.d.connect());
    h.write(a, 0, "/k", "0").ok();
    let tx = h.start(a);
    h.call(a, MsgType::Read, tx, &["/k"]).ok();
    h.write(a, tx, "/other", "1").ok();
    h.write(b, 0, "/k", "changed").ok();
    assert_eq!(h.end(a, tx).err(), "EAGAIN");
    assert_eq!(
        h.call(a, MsgType::Read, 0, &["/other"]).err(),
        "ENOENT",
        "nothing applied"
    );
    // An unrelated change does not matter.
    let tx = h.start(a);
    h.call(a, MsgType::Read, tx, &["/k"]).ok();
    h.write(b, 0, "/unrelated", "1").ok();
    h.end(a, tx).ok();
    h.check();
}

#[test]
fn concurrent_writes_to_one_node_conflict() {
    let mut h = Harness::new();
    let (a, b) = (h.d.connect(), h.d.connect());
    let (ta, tb) = (h.start(a), h.start(b));
    h.write(a, ta, "/same", "a").ok();
    h.write(b, tb, "/same", "b").ok();
    h.end(a, ta).ok();
    assert_eq!(h.end(b, tb).err(), "EAGAIN");
    assert_eq!(h.call(a, MsgType::Read, 0, &["/same"]).ok().text(), "a");
}

/// What a booting service does: create its own entry, write keys, list the
/// parent (to see whether the name is taken).
fn register(h: &mut Harness, conn: ConnId, name: &str) -> u32 {
    let tx = h.start(conn);
    h.call(conn, MsgType::Directory, tx, &["/jitsu/services"])
        .ok();
    for key in ["ip", "state", "owner", "boot", "stats"] {
        h.write(conn, tx, &format!("/jitsu/services/{name}/{key}"), "v")
            .ok();
    }
    tx
}

#[test]
fn registrations_of_different_names_merge() {
    let mut h = Harness::new();
    let (a, b) = (h.d.connect(), h.d.connect());
    h.call(a, MsgType::Mkdir, 0, &["/jitsu/services"]).ok();
    let (ta, tb) = (register(&mut h, a, "web"), register(&mut h, b, "db"));
    h.end(a, ta).ok();
    h.end(b, tb).ok();
    let mut names = h
        .call(a, MsgType::Directory, 0, &["/jitsu/services"])
        .ok()
        .strings();
    names.sort();
    assert_eq!(names, ["db", "web"]);
    h.check();
}

#[test]
fn registrations_of_the_same_name_still_conflict() {
    let mut h = Harness::new();
    let (a, b) = (h.d.connect(), h.d.connect());
    h.call(a, MsgType::Mkdir, 0, &["/jitsu/services"]).ok();
    let (ta, tb) = (register(&mut h, a, "web"), register(&mut h, b, "web"));
    h.end(a, ta).ok();
    assert_eq!(h.end(b, tb).err(), "EAGAIN");
}

#[test]
fn strict_mode_turns_the_merge_off() {
    let mut h = Harness::with(Limits::default(), true);
    let (a, b) = (h.d.connect(), h.d.connect());
    h.call(a, MsgType::Mkdir, 0, &["/jitsu/services"]).ok();
    let (ta, tb) = (register(&mut h, a, "web"), register(&mut h, b, "db"));
    h.end(a, ta).ok();
    assert_eq!(h.end(b, tb).err(), "EAGAIN");
}

#[test]
fn a_removed_sibling_does_not_block_a_registration_but_a_changed_value_does() {
    let mut h = Harness::new();
    let (a, b) = (h.d.connect(), h.d.connect());
    h.write(a, 0, "/jitsu/services/old/ip", "1").ok();
    let ta = register(&mut h, a, "new");
    h.call(b, MsgType::Rm, 0, &["/jitsu/services/old"]).ok();
    h.end(a, ta).ok();
    // Reading a value that changes meanwhile is a real conflict, merge or not.
    h.write(a, 0, "/jitsu/config", "1").ok();
    let ta = register(&mut h, a, "third");
    h.call(a, MsgType::Read, ta, &["/jitsu/config"]).ok();
    h.write(b, 0, "/jitsu/config", "2").ok();
    assert_eq!(h.end(a, ta).err(), "EAGAIN");
}

#[test]
fn limits_answer_with_xen_errors_and_change_nothing() {
    let limits = Limits {
        nodes_per_domain: 10,
        watches_per_conn: 2,
        transactions_per_conn: 2,
        ..Limits::default()
    };
    let mut h = Harness::with(limits, false);
    let (c, other) = (h.d.connect(), h.d.connect());
    for i in 0..8 {
        h.write(c, 0, &format!("/n{i}"), "v").ok();
    }
    let before = h.d.store().paths();
    assert_eq!(h.write(c, 0, "/deep/a/b", "v").err(), "EQUOTA");
    assert_eq!(h.d.store().paths(), before, "tree unchanged");
    h.write(c, 0, "/n9", "v").ok();

    h.call(c, MsgType::Watch, 0, &["/a", "1"]).ok();
    h.call(c, MsgType::Watch, 0, &["/a", "2"]).ok();
    assert_eq!(h.call(c, MsgType::Watch, 0, &["/a", "3"]).err(), "E2BIG");
    h.call(other, MsgType::Watch, 0, &["/a", "3"]).ok();

    h.start(c);
    h.start(c);
    assert_eq!(
        h.call(c, MsgType::TransactionStart, 0, &[""]).err(),
        "ENOSPC"
    );
    h.start(other);

    let long = format!("/{}", "x".repeat(3100));
    assert_eq!(h.call(c, MsgType::Read, 0, &[&long]).err(), "EINVAL");
    assert_eq!(
        h.call(c, MsgType::Read, 0, &["/n1"]).ok().text(),
        "v",
        "connection still usable"
    );
    h.check();
}

#[test]
fn a_listing_too_long_for_one_reply_is_e2big_and_comes_in_parts() {
    let mut h = Harness::new();
    let c = h.d.connect();
    let names: Vec<String> = (0..400)
        .map(|i| format!("child-with-a-longish-name-{i:04}"))
        .collect();
    for n in &names {
        h.call(c, MsgType::Mkdir, 0, &[&format!("/big/{n}")]).ok();
    }
    assert_eq!(h.call(c, MsgType::Directory, 0, &["/big"]).err(), "E2BIG");
    let mut got = Vec::new();
    let mut offset = 0usize;
    let mut gens = Vec::new();
    loop {
        let r = h.call(c, MsgType::DirectoryPart, 0, &["/big", &offset.to_string()]);
        let payload = r.ok().msg.payload.clone();
        let parts = split_strings(&payload);
        gens.push(parts[0].to_vec());
        let names_here: Vec<&[u8]> = parts[1..].to_vec();
        let done = names_here.last() == Some(&&b""[..]);
        for n in names_here.iter().filter(|n| !n.is_empty()) {
            offset += n.len() + 1;
            got.push(String::from_utf8_lossy(n).into_owned());
        }
        if done {
            break;
        }
    }
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(got, expected);
    assert!(
        gens.windows(2).all(|g| g[0] == g[1]),
        "same generation across parts"
    );
    assert_eq!(
        h.call(c, MsgType::DirectoryPart, 0, &["/big", "3"]).err(),
        "EINVAL",
        "not at a name boundary"
    );
}

#[test]
fn domains_are_introduced_and_released_with_events() {
    let mut h = Harness::new();
    let c = h.d.connect();
    h.call(c, MsgType::Watch, 0, &["@introduceDomain", "i"])
        .ok();
    h.call(c, MsgType::Watch, 0, &["@releaseDomain", "r"]).ok();
    assert_eq!(
        h.call(c, MsgType::IsDomainIntroduced, 0, &["7"])
            .ok()
            .strings(),
        ["F"]
    );
    let intro = h.call(c, MsgType::Introduce, 0, &["7", "4096", "3"]);
    assert_eq!(
        intro.ok().events,
        vec![(c, "@introduceDomain".into(), "i".into())]
    );
    assert_eq!(
        h.call(c, MsgType::IsDomainIntroduced, 0, &["7"])
            .ok()
            .strings(),
        ["T"]
    );
    let rel = h.call(c, MsgType::Release, 0, &["7"]);
    assert_eq!(
        rel.ok().events,
        vec![(c, "@releaseDomain".into(), "r".into())]
    );
    assert_eq!(h.call(c, MsgType::Release, 0, &["7"]).err(), "ENOENT");
    assert_eq!(
        h.call(c, MsgType::Introduce, 0, &["0", "1", "1"]).err(),
        "EINVAL"
    );
    assert_eq!(
        h.call(c, MsgType::Introduce, 0, &["x", "1", "1"]).err(),
        "EINVAL"
    );
}
