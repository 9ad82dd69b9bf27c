//! Flows: where a request came from, so that requests in its dialog go back the same
//! way (RFC 5626 §3.2: a client behind NAT, or a TLS client with no listening
//! certificate, can be reached only over the connection it opened).
//!
//! A [`Flow`] is **opaque to services**: they store it, compare it, hash it and hand it
//! back to the [`Deliverer`](super::Deliverer); they never read it. Only the router (which
//! turns it back into a transport destination) and the location service (which keeps it
//! with a binding) use the constructors and accessors. It names the front end holding
//! the flow as well as the connection there, so that in a pool a flow can be reached
//! through the front end that holds it.

use std::net::SocketAddr;

/// A front end of a pool (a process that holds client connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontEnd(pub u32);

impl FrontEnd {
    /// The front end of a standalone server, i.e. this process.
    pub const LOCAL: FrontEnd = FrontEnd(0);
}

/// The transport protocol of a flow (RFC 3261 §18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Parses a Via transport or `transport=` value (case-insensitive).
    pub fn from_name(s: &str) -> Option<Transport> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            _ => None,
        }
    }
}

/// One stream connection: the front end holding it and its number there. What closes
/// when a connection closes (state tied to it goes with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Connection {
    pub fe: FrontEnd,
    /// The connection's number on that front end (its transport layer's identifier).
    pub number: u64,
}

/// The connection part of a flow: enough for the front end holding it to send over it
/// again (or, once it is gone, to the same address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conn {
    pub transport: Transport,
    /// The peer's address.
    pub remote: SocketAddr,
    /// Our address it arrived on (for UDP on a wildcard socket, the wildcard).
    pub local: SocketAddr,
    /// The stream connection, if any (none for UDP).
    pub number: Option<u64>,
}

/// Where a request came from: a connection (or UDP address) of a front end. Opaque to
/// services (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    fe: FrontEnd,
    conn: Conn,
}

impl Flow {
    /// For the router: the flow `conn` held by `fe`.
    pub fn new(fe: FrontEnd, conn: Conn) -> Flow {
        Flow { fe, conn }
    }

    /// The front end holding the flow.
    pub fn fe(&self) -> FrontEnd {
        self.fe
    }

    /// The connection part, for the front end holding the flow.
    pub fn conn(&self) -> Conn {
        self.conn
    }

    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        self.conn.remote
    }

    /// The stream connection the flow is, if it is one.
    pub fn connection(&self) -> Option<Connection> {
        self.conn.number.map(|number| Connection {
            fe: self.fe,
            number,
        })
    }
}
