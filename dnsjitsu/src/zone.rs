//! The zone: which names exist and what to answer for them. Built from the
//! registry, answered without I/O.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use hickory_proto::rr::rdata::{A, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

/// A registered service as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ip: Ipv4Addr,
    pub state: String,
}

pub struct Zone {
    origin: Name,
    lower: LowerName,
    ttl: u32,
    ns_name: Name,
    ns_addr: Ipv4Addr,
}

/// What a query gets.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// Records for the answer section.
    Records(Vec<Record>),
    /// The name exists, not with this type (NOERROR, no answer).
    NoData,
    /// No such name in the zone.
    NxDomain,
    /// Not our zone.
    Elsewhere,
}

/// The service a query is for, if it names one.
pub fn service_label<'a>(zone: &Zone, name: &'a LowerName, text: &'a str) -> Option<&'a str> {
    if !zone.lower.zone_of(name) || name.num_labels() != zone.lower.num_labels() + 1 {
        return None;
    }
    text.split('.').next()
}

impl Zone {
    /// `origin` like `jitsu.internal.`; the name server is `ns.<origin>` at `ns_addr`.
    pub fn new(
        origin: Name,
        ttl: u32,
        ns_addr: Ipv4Addr,
    ) -> Result<Zone, hickory_proto::ProtoError> {
        let ns_name = Name::from_ascii("ns")?.append_domain(&origin)?;
        Ok(Zone {
            lower: LowerName::from(&origin),
            origin,
            ttl,
            ns_name,
            ns_addr,
        })
    }

    pub fn origin(&self) -> &Name {
        &self.origin
    }

    pub fn contains(&self, name: &LowerName) -> bool {
        self.lower.zone_of(name)
    }

    pub fn soa(&self) -> Record {
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&self.origin))
            .unwrap_or_else(|_| self.origin.clone());
        let soa = SOA::new(self.ns_name.clone(), rname, 1, 3600, 600, 86400, self.ttl);
        Record::from_rdata(self.origin.clone(), self.ttl, RData::SOA(soa))
    }

    fn ns(&self) -> Record {
        Record::from_rdata(
            self.origin.clone(),
            self.ttl,
            RData::NS(NS(self.ns_name.clone())),
        )
    }

    fn a(&self, name: &Name, ip: Ipv4Addr) -> Record {
        Record::from_rdata(name.clone(), self.ttl, RData::A(A(ip)))
    }

    /// Answers `name`/`qtype` from the registered services.
    pub fn answer(
        &self,
        name: &LowerName,
        qtype: RecordType,
        services: &HashMap<String, Entry>,
    ) -> Answer {
        if !self.contains(name) {
            return Answer::Elsewhere;
        }
        let original = Name::from(name.clone());
        if *name == self.lower {
            return match qtype {
                RecordType::SOA => Answer::Records(vec![self.soa()]),
                RecordType::NS => Answer::Records(vec![self.ns()]),
                _ => Answer::NoData,
            };
        }
        if original == self.ns_name {
            return match qtype {
                RecordType::A => Answer::Records(vec![self.a(&original, self.ns_addr)]),
                _ => Answer::NoData,
            };
        }
        let text = name.to_string();
        let Some(entry) = service_label(self, name, &text).and_then(|label| services.get(label))
        else {
            return Answer::NxDomain;
        };
        match qtype {
            RecordType::A | RecordType::ANY => Answer::Records(vec![self.a(&original, entry.ip)]),
            _ => Answer::NoData,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> (Zone, HashMap<String, Entry>) {
        let zone = Zone::new(
            Name::from_ascii("jitsu.internal.").unwrap(),
            5,
            Ipv4Addr::LOCALHOST,
        )
        .unwrap();
        let mut services = HashMap::new();
        services.insert(
            "web".to_string(),
            Entry {
                ip: Ipv4Addr::new(10, 77, 0, 2),
                state: "parked".into(),
            },
        );
        (zone, services)
    }

    fn q(name: &str) -> LowerName {
        LowerName::from(Name::from_ascii(name).unwrap())
    }

    #[test]
    fn answers() {
        let (z, s) = zone();
        let Answer::Records(r) = z.answer(&q("web.jitsu.internal."), RecordType::A, &s) else {
            panic!()
        };
        assert_eq!(r[0].data(), &RData::A(A(Ipv4Addr::new(10, 77, 0, 2))));
        assert_eq!(r[0].ttl(), 5);
        assert_eq!(
            z.answer(&q("WEB.Jitsu.Internal."), RecordType::A, &s)
                .records_len(),
            1,
            "case-insensitive"
        );
        assert_eq!(
            z.answer(&q("web.jitsu.internal."), RecordType::AAAA, &s),
            Answer::NoData
        );
        assert_eq!(
            z.answer(&q("nope.jitsu.internal."), RecordType::A, &s),
            Answer::NxDomain
        );
        assert_eq!(
            z.answer(&q("a.web.jitsu.internal."), RecordType::A, &s),
            Answer::NxDomain
        );
        assert_eq!(
            z.answer(&q("example.com."), RecordType::A, &s),
            Answer::Elsewhere
        );
        assert_eq!(
            z.answer(&q("jitsu.internal."), RecordType::SOA, &s)
                .records_len(),
            1
        );
        assert_eq!(
            z.answer(&q("jitsu.internal."), RecordType::NS, &s)
                .records_len(),
            1
        );
        assert_eq!(
            z.answer(&q("ns.jitsu.internal."), RecordType::A, &s)
                .records_len(),
            1
        );
    }

    impl Answer {
        fn records_len(&self) -> usize {
            match self {
                Answer::Records(r) => r.len(),
                _ => 0,
            }
        }
    }
}
