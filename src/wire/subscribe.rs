//! SUBSCRIBE, SUBACK, UNSUBSCRIBE (UNSUBACK is in the parent module).

use super::{kind, put_u16, put_varint, DecodeError, Reader};

/// A SUBSCRIBE packet: its packet identifier and a validated list of (filter, QoS).
/// Filter syntax (wildcard placement) is left to the broker, which answers 0x80 for a bad one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub packet_id: u16,
    pub filters: TopicFilters<'a>,
}

/// An UNSUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    pub packet_id: u16,
    pub filters: TopicFilters<'a>,
}

/// The filter list of a SUBSCRIBE or UNSUBSCRIBE, already checked; iterating yields each
/// filter with its requested QoS (always 0 for UNSUBSCRIBE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilters<'a> {
    body: &'a [u8],
    with_qos: bool,
}

impl<'a> Iterator for TopicFilters<'a> {
    type Item = (&'a str, u8);
    fn next(&mut self) -> Option<Self::Item> {
        let mut r = Reader::new(self.body);
        let filter = r.utf8().ok()?;
        let qos = if self.with_qos { r.u8().ok()? } else { 0 };
        self.body = r.rest();
        Some((filter, qos))
    }
}

impl<'a> TopicFilters<'a> {
    fn check(body: &'a [u8], with_qos: bool) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        if r.is_empty() {
            return Err(DecodeError::protocol("no topic filters"));
        }
        while !r.is_empty() {
            r.utf8()?;
            if with_qos {
                let options = r.u8()?;
                if options & 0xfc != 0 {
                    return Err(DecodeError::malformed(
                        "reserved subscription option bits set",
                    ));
                }
                if options & 0x03 == 3 {
                    return Err(DecodeError::malformed("requested QoS 3"));
                }
            }
        }
        Ok(TopicFilters { body, with_qos })
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
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let packet_id = packet_id(&mut r)?;
        let filters = TopicFilters::check(r.rest(), true)?;
        Ok(Subscribe { packet_id, filters })
    }
}

impl<'a> Unsubscribe<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let packet_id = packet_id(&mut r)?;
        let filters = TopicFilters::check(r.rest(), false)?;
        Ok(Unsubscribe { packet_id, filters })
    }
}

/// SUBACK: written as a header, then one return code per filter.
pub struct SubAck;

impl SubAck {
    /// Write the header for `count` return codes; the caller pushes the codes after it.
    pub fn encode_header(out: &mut Vec<u8>, packet_id: u16, count: usize) {
        out.push(kind::SUBACK << 4);
        put_varint(out, 2 + count);
        put_u16(out, packet_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_filters() {
        let body = [0, 9, 0, 3, b'a', b'/', b'#', 1, 0, 1, b'b', 2];
        let s = Subscribe::decode(&body).unwrap();
        assert_eq!(s.packet_id, 9);
        let v: Vec<_> = s.filters.collect();
        assert_eq!(v, vec![("a/#", 1), ("b", 2)]);
    }

    #[test]
    fn subscribe_invalid() {
        assert!(Subscribe::decode(&[0, 1]).is_err()); // no filters
        assert!(Subscribe::decode(&[0, 0, 0, 1, b'a', 0]).is_err()); // id 0
        assert!(Subscribe::decode(&[0, 1, 0, 1, b'a', 3]).is_err()); // qos 3
        assert!(Subscribe::decode(&[0, 1, 0, 1, b'a', 0x40]).is_err()); // reserved bits
        assert!(Subscribe::decode(&[0, 1, 0, 1, b'a']).is_err()); // missing qos
        assert!(Subscribe::decode(&[0, 1, 0, 2, b'a']).is_err()); // truncated
    }

    #[test]
    fn unsubscribe_filters() {
        let u = Unsubscribe::decode(&[0, 2, 0, 1, b'x', 0, 1, b'y']).unwrap();
        assert_eq!(u.filters.map(|f| f.0).collect::<Vec<_>>(), vec!["x", "y"]);
        assert!(Unsubscribe::decode(&[0, 2]).is_err());
    }
}
