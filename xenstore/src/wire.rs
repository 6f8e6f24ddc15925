//! The XenStore wire protocol: a 16-byte header (`xsd_sockmsg`: type,
//! req_id, tx_id, len, little endian) and at most 4096 bytes of payload.

use thiserror::Error;

pub const HEADER_LEN: usize = 16;
/// XENSTORE_PAYLOAD_MAX.
pub const PAYLOAD_MAX: usize = 4096;

/// Message types, numbered as in `xs_wire.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MsgType {
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    Restrict = 20,
    ResetWatches = 21,
    DirectoryPart = 22,
}

impl MsgType {
    pub fn from_u32(v: u32) -> Option<MsgType> {
        use MsgType::*;
        const ALL: [MsgType; 23] = [
            Control,
            Directory,
            Read,
            GetPerms,
            Watch,
            Unwatch,
            TransactionStart,
            TransactionEnd,
            Introduce,
            Release,
            GetDomainPath,
            Write,
            Mkdir,
            Rm,
            SetPerms,
            WatchEvent,
            Error,
            IsDomainIntroduced,
            Resume,
            SetTarget,
            Restrict,
            ResetWatches,
            DirectoryPart,
        ];
        ALL.get(v as usize).copied()
    }
}

/// The error names XenStore sends (as strings) in ERROR replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum XsError {
    #[error("EINVAL")]
    Inval,
    #[error("EACCES")]
    Access,
    #[error("EEXIST")]
    Exist,
    #[error("EISDIR")]
    IsDir,
    #[error("ENOENT")]
    NoEnt,
    #[error("ENOMEM")]
    NoMem,
    #[error("ENOSPC")]
    NoSpc,
    #[error("EIO")]
    Io,
    #[error("ENOTEMPTY")]
    NotEmpty,
    #[error("ENOSYS")]
    NoSys,
    #[error("EROFS")]
    RoFs,
    #[error("EBUSY")]
    Busy,
    #[error("EAGAIN")]
    Again,
    #[error("EISCONN")]
    IsConn,
    #[error("E2BIG")]
    TooBig,
    #[error("EPERM")]
    Perm,
    #[error("EQUOTA")]
    Quota,
}

impl XsError {
    const ALL: [XsError; 17] = [
        XsError::Inval,
        XsError::Access,
        XsError::Exist,
        XsError::IsDir,
        XsError::NoEnt,
        XsError::NoMem,
        XsError::NoSpc,
        XsError::Io,
        XsError::NotEmpty,
        XsError::NoSys,
        XsError::RoFs,
        XsError::Busy,
        XsError::Again,
        XsError::IsConn,
        XsError::TooBig,
        XsError::Perm,
        XsError::Quota,
    ];

    pub fn name(self) -> String {
        self.to_string()
    }

    pub fn from_name(name: &str) -> Option<XsError> {
        XsError::ALL.into_iter().find(|e| e.to_string() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Header {
            kind: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        for (i, v) in [self.kind, self.req_id, self.tx_id, self.len]
            .into_iter()
            .enumerate()
        {
            out[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: MsgType,
    pub req_id: u32,
    pub tx_id: u32,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("payload of {0} bytes exceeds the {PAYLOAD_MAX}-byte limit")]
    TooLong(u32),
    #[error("unknown message type {0}")]
    UnknownType(u32),
}

impl Message {
    pub fn new(kind: MsgType, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Message {
        Message {
            kind,
            req_id,
            tx_id,
            payload,
        }
    }

    /// Header and payload as sent on the wire. Panics in debug builds only
    /// if the payload is over the limit, which callers check first.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(self.payload.len() <= PAYLOAD_MAX);
        let header = Header {
            kind: self.kind as u32,
            req_id: self.req_id,
            tx_id: self.tx_id,
            len: self.payload.len() as u32,
        };
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes one message from the front of `bytes`. `Ok(None)`: more bytes
    /// needed. On success also returns how many bytes were used.
    pub fn decode(bytes: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
        match Frame::decode(bytes)? {
            None => Ok(None),
            Some((frame, used)) => Ok(Some((frame.message()?, used))),
        }
    }

    /// The ERROR reply to this request.
    pub fn error_reply(&self, err: XsError) -> Message {
        let mut payload = err.name().into_bytes();
        payload.push(0);
        Message::new(MsgType::Error, self.req_id, self.tx_id, payload)
    }

    /// A successful reply to this request.
    pub fn reply(&self, payload: Vec<u8>) -> Message {
        Message::new(self.kind, self.req_id, self.tx_id, payload)
    }

    /// The payload as NUL-terminated strings (a final unterminated piece
    /// counts too: some clients omit the last NUL).
    pub fn strings(&self) -> Vec<&[u8]> {
        split_strings(&self.payload)
    }
}

/// A header and its payload, before the type is checked: a daemon answers
/// an unknown type with EINVAL and keeps the connection, so it needs the
/// request's ids even when the type means nothing to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn decode(bytes: &[u8]) -> Result<Option<(Frame, usize)>, DecodeError> {
        let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::parse(head);
        check_header(&header)?;
        let total = HEADER_LEN + header.len as usize;
        if bytes.len() < total {
            return Ok(None);
        }
        Ok(Some((
            Frame {
                header,
                payload: bytes[HEADER_LEN..total].to_vec(),
            },
            total,
        )))
    }

    pub fn message(self) -> Result<Message, DecodeError> {
        let h = self.header;
        let kind = MsgType::from_u32(h.kind).ok_or(DecodeError::UnknownType(h.kind))?;
        Ok(Message {
            kind,
            req_id: h.req_id,
            tx_id: h.tx_id,
            payload: self.payload,
        })
    }
}

/// Only the length can make a header unusable before the payload arrives.
pub fn check_header(header: &Header) -> Result<(), DecodeError> {
    if header.len as usize > PAYLOAD_MAX {
        return Err(DecodeError::TooLong(header.len));
    }
    Ok(())
}

pub fn split_strings(payload: &[u8]) -> Vec<&[u8]> {
    let mut parts: Vec<&[u8]> = payload.split(|&b| b == 0).collect();
    if payload.last() == Some(&0) || payload.is_empty() {
        parts.pop();
    }
    parts
}

/// `"OK\0"`.
pub fn ok() -> Vec<u8> {
    b"OK\0".to_vec()
}

/// Joins strings, each followed by a NUL.
pub fn join_strings<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(item);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_type() -> impl Strategy<Value = MsgType> {
        (0u32..23).prop_map(|v| MsgType::from_u32(v).unwrap())
    }

    proptest! {
        #[test]
        fn round_trip(kind in any_type(), req in any::<u32>(), tx in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..=PAYLOAD_MAX)) {
            let msg = Message::new(kind, req, tx, payload);
            let bytes = msg.encode();
            let (back, used) = Message::decode(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(back, msg);
            // Every strict prefix asks for more bytes.
            let cut = bytes.len() / 2;
            prop_assert_eq!(Message::decode(&bytes[..cut]).unwrap(), None);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..6000)) {
            if let Ok(Some((msg, used))) = Message::decode(&bytes) {
                prop_assert!(used <= bytes.len() && msg.payload.len() <= PAYLOAD_MAX);
            }
        }

        #[test]
        fn oversized_headers_are_refused(len in (PAYLOAD_MAX as u32 + 1)..) {
            let header = Header { kind: 2, req_id: 1, tx_id: 0, len }.to_bytes();
            prop_assert_eq!(Message::decode(&header), Err(DecodeError::TooLong(len)));
        }

        #[test]
        fn error_names_round_trip(i in 0usize..17) {
            let e = XsError::ALL[i];
            prop_assert_eq!(XsError::from_name(&e.name()), Some(e));
        }
    }

    #[test]
    fn unknown_types_are_refused_after_the_payload_arrives() {
        let mut bytes = Header {
            kind: 99,
            req_id: 1,
            tx_id: 0,
            len: 2,
        }
        .to_bytes()
        .to_vec();
        assert_eq!(Message::decode(&bytes), Ok(None));
        bytes.extend_from_slice(b"a\0");
        assert_eq!(Message::decode(&bytes), Err(DecodeError::UnknownType(99)));
    }

    #[test]
    fn strings_split_on_nul() {
        assert_eq!(split_strings(b"a\0bc\0"), vec![&b"a"[..], b"bc"]);
        assert_eq!(split_strings(b"a\0bc"), vec![&b"a"[..], b"bc"]);
        assert_eq!(split_strings(b""), Vec::<&[u8]>::new());
        assert_eq!(split_strings(b"\0"), vec![&b""[..]]);
    }
}
