//! Key and channel names of a fleet in Redis: one hash tag per partition, so that a session's keys
//! and its partition's streams share a Redis Cluster slot.

use vitals_proto::SessionId;

/// Names the keys of one fleet (a prefix and a partition count), for the servers and for a backend
/// that reads presence, events and messages (layout in docs/FLEET.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetKeys {
    prefix: String,
    partitions: u16,
}

impl FleetKeys {
    /// Keys under `prefix` (e.g. `vitals`) with sessions spread over `partitions` (at least 1).
    pub fn new(prefix: &str, partitions: u16) -> FleetKeys {
        FleetKeys {
            prefix: prefix.to_string(),
            partitions: partitions.max(1),
        }
    }

    /// How many partitions sessions are spread over.
    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// The partition of `session`: its id modulo the partition count.
    pub fn partition(&self, session: SessionId) -> u16 {
        (session.0 % u64::from(self.partitions)) as u16
    }

    fn tag(&self, partition: u16) -> String {
        format!("{}:{{p{partition}}}", self.prefix)
    }

    /// The session's hash (owner, epoch, presence, sequence points).
    pub fn session(&self, session: SessionId) -> String {
        format!("{}:s:{:016x}", self.tag(self.partition(session)), session.0)
    }

    /// The session's outbound stream (server → client messages not yet acknowledged).
    pub fn outbound(&self, session: SessionId) -> String {
        format!("{}:o:{:016x}", self.tag(self.partition(session)), session.0)
    }

    /// A partition's inbound stream: client → server messages, each exactly once, in order per
    /// session (fields `session`, `seq`, `node`, `data`).
    pub fn inbound(&self, partition: u16) -> String {
        format!("{}:in", self.tag(partition))
    }

    /// A partition's sorted set of live sessions (score: since when, ms since the Unix epoch).
    pub fn live(&self, partition: u16) -> String {
        format!("{}:live", self.tag(partition))
    }

    /// A partition's event stream: `connect`, `resume`, `park` (with the reason, e.g.
    /// `silence_timeout` for a conviction), `end`, `lost`.
    pub fn events(&self, partition: u16) -> String {
        format!("{}:events", self.tag(partition))
    }

    /// The hash of nodes: node id → its last heartbeat (ms since the Unix epoch).
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// The prefix of the nodes' doorbell channels (the node id follows).
    pub fn channel_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }

    /// A node's doorbell channel.
    pub fn channel(&self, node: &str) -> String {
        format!("{}{node}", self.channel_prefix())
    }

    /// The id of a session as the hashes and streams spell it (16 hex digits).
    pub fn session_field(session: SessionId) -> String {
        format!("{:016x}", session.0)
    }

    /// Parses [`session_field`](Self::session_field).
    pub fn parse_session(field: &str) -> Option<SessionId> {
        u64::from_str_radix(field, 16).ok().map(SessionId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_and_its_partition_share_one_hash_tag() {
        let k = FleetKeys::new("vitals", 16);
        let sid = SessionId(0xabc0_0000_0000_0013);
        let p = k.partition(sid);
        assert_eq!(p, 3);
        let tag = |key: &str| key[key.find('{').unwrap()..=key.find('}').unwrap()].to_string();
        for key in [
            k.session(sid),
            k.outbound(sid),
            k.inbound(p),
            k.live(p),
            k.events(p),
        ] {
            assert_eq!(tag(&key), "{p3}", "{key}");
        }
        assert_eq!(
            FleetKeys::parse_session(&FleetKeys::session_field(sid)),
            Some(sid)
        );
    }
}
