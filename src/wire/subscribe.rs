//! SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK.

use super::properties::{Context, Properties};
use super::{kind, put_u16, put_varint, DecodeError, Reader};

/// A SUBSCRIBE packet: its packet identifier and a validated list of (filter, options).
/// Filter syntax (wildcard placement) is left to the broker, which refuses a bad one in SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub packet_id: u16,
    pub filters: TopicFilters<'a>,
    /// MQTT 5 properties: the Subscription Identifier (empty for 3.1.x).
    pub properties: Properties<'a>,
}

/// An UNSUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    pub packet_id: u16,
    pub filters: TopicFilters<'a>,
    pub properties: Properties<'a>,
}

/// Subscription options (spec 3.8.3.1); 3.1.x uses only the QoS bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubOptions(pub u8);

impl SubOptions {
    pub fn qos(self) -> u8 {
        self.0 & 0x03
    }
    pub fn no_local(self) -> bool {
        self.0 & 0x04 != 0
    }
    pub fn retain_as_published(self) -> bool {
        self.0 & 0x08 != 0
    }
    /// 0: send retained messages at subscribe; 1: only if the subscription is new; 2: never.
    pub fn retain_handling(self) -> u8 {
        (self.0 >> 4) & 0x03
    }
}

/// The filter list of a SUBSCRIBE or UNSUBSCRIBE, already checked; iterating yields each
/// filter with its options (always 0 for UNSUBSCRIBE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilters<'a> {
    body: &'a [u8],
    with_options: bool,
}

impl<'a> Iterator for TopicFilters<'a> {
    type Item = (&'a str, SubOptions);
    fn next(&mut self) -> Option<Self::Item> {
        let mut r = Reader::new(self.body);
        let filter = r.utf8().ok()?;
        let options = if self.with_options { r.u8().ok()? } else { 0 };
        self.body = r.rest();
        Some((filter, SubOptions(options)))
    }
}

impl<'a> TopicFilters<'a> {
    fn check(body: &'a [u8], with_options: bool, v5: bool) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        if r.is_empty() {
            return Err(DecodeError::protocol("no topic filters"));
        }
        while !r.is_empty() {
            r.utf8()?;
            if with_options {
                let options = r.u8()?;
                let reserved = if v5 { 0xc0 } else { 0xfc };
                if options & reserved != 0 {
                    return Err(DecodeError::malformed(
                        "reserved subscription option bits set",
                    ));
                }
                if options & 0x03 == 3 {
                    return Err(DecodeError::malformed("requested QoS 3"));
                }
                if (options >> 4) & 0x03 == 3 {
                    return Err(DecodeError::malformed("retain handling 3"));
                }
            }
        }
        Ok(TopicFilters { body, with_options })
    }
}

fn packet_id(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::protocol("packet identifier 0"));
    }
    Ok(id)
}

impl<'a> Subscribe<'a> {
    pub fn decode(body: &'a [u8], v5: bool) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let packet_id = packet_id(&mut r)?;
        let properties = if v5 {
            Properties::decode(&mut r, Context::Subscribe)?
        } else {
            Properties::default()
        };
        let filters = TopicFilters::check(r.rest(), true, v5)?;
        Ok(Subscribe {
            packet_id,
            filters,
            properties,
        })
    }
}

impl<'a> Unsubscribe<'a> {
    pub fn decode(body: &'a [u8], v5: bool) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let packet_id = packet_id(&mut r)?;
        let properties = if v5 {
            Properties::decode(&mut r, Context::Unsubscribe)?
        } else {
            Properties::default()
        };
        let filters = TopicFilters::check(r.rest(), false, v5)?;
        Ok(Unsubscribe {
            packet_id,
            filters,
            properties,
        })
    }
}

/// SUBACK (and MQTT 5 UNSUBACK, which has the same shape): written as a header, then one
/// reason code per filter.
pub struct SubAck;

impl SubAck {
    /// Write the header for `count` codes; the caller pushes the codes after it. MQTT 5 adds an
    /// empty property list.
    pub fn encode_header(out: &mut Vec<u8>, packet_id: u16, count: usize, v5: bool) {
        Self::header(out, kind::SUBACK, packet_id, count, v5);
    }

    /// The MQTT 5 UNSUBACK header; the caller pushes one reason code per filter.
    pub fn encode_unsuback_header_v5(out: &mut Vec<u8>, packet_id: u16, count: usize) {
        Self::header(out, kind::UNSUBACK, packet_id, count, true);
    }

    fn header(out: &mut Vec<u8>, packet_type: u8, packet_id: u16, count: usize, v5: bool) {
        out.push(packet_type << 4);
        put_varint(out, 2 + v5 as usize + count);
        put_u16(out, packet_id);
        if v5 {
            out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_filters() {
        let body = [0, 9, 0, 3, b'a', b'/', b'#', 1, 0, 1, b'b', 2];
        let s = Subscribe::decode(&body, false).unwrap();
        assert_eq!(s.packet_id, 9);
        let v: Vec<_> = s.filters.map(|(f, o)| (f, o.qos())).collect();
        assert_eq!(v, vec![("a/#", 1), ("b", 2)]);
        // v5: properties, then options with No Local, Retain As Published, Retain Handling.
        let body = [0, 9, 2, 0x0B, 7, 0, 1, b'c', 0b0010_1101];
        let s = Subscribe::decode(&body, true).unwrap();
        assert_eq!(s.properties.varint(0x0B), Some(7));
        let (f, o) = s.filters.clone().next().unwrap();
        assert_eq!(
            (
                f,
                o.qos(),
                o.no_local(),
                o.retain_as_published(),
                o.retain_handling()
            ),
            ("c", 1, true, true, 2)
        );
    }

    #[test]
    fn subscribe_invalid() {
        assert!(Subscribe::decode(&[0, 1], false).is_err()); // no filters
        assert!(Subscribe::decode(&[0, 0, 0, 1, b'a', 0], false).is_err()); // id 0
        assert!(Subscribe::decode(&[0, 1, 0, 1, b'a', 3], false).is_err()); // qos 3
        assert!(Subscribe::decode(&[0, 1, 0, 1, b'a', 0x04], false).is_err()); // NL in 3.1.1
        assert!(Subscribe::decode(&[0, 1, 0, 0, 1, b'a', 0x40], true).is_err()); // reserved
        assert!(Subscribe::decode(&[0, 1, 0, 0, 1, b'a', 0x30], true).is_err()); // RH 3
        assert!(Subscribe::decode(&[0, 1, 0, 1, b'a'], false).is_err()); // missing qos
        assert!(Subscribe::decode(&[0, 1, 0, 2, b'a'], false).is_err()); // truncated
    }

    #[test]
    fn unsubscribe_filters() {
        let u = Unsubscribe::decode(&[0, 2, 0, 1, b'x', 0, 1, b'y'], false).unwrap();
        assert_eq!(u.filters.map(|f| f.0).collect::<Vec<_>>(), vec!["x", "y"]);
        assert!(Unsubscribe::decode(&[0, 2], false).is_err());
        let u = Unsubscribe::decode(&[0, 2, 0, 0, 1, b'x'], true).unwrap();
        assert_eq!(u.filters.count(), 1);
    }
}
