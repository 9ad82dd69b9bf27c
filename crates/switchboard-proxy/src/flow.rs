//! The router's edge between the transport's names for a flow ([`Source`],
//! [`ConnectionId`], [`TransportKind`]) and the core's ([`Flow`], [`Connection`],
//! [`Transport`]), which services and the location service keep. A standalone server is
//! its own (and only) front end, [`FrontEnd::LOCAL`].

use sip_transport::{ConnectionId, Source, TransportKind};
use switchboard_core::seam::{Conn, Connection, Flow, FrontEnd, Transport};

/// The flow a message arrived over.
pub(crate) fn flow_of(source: &Source) -> Flow {
    Flow::new(
        FrontEnd::LOCAL,
        Conn {
            transport: transport_of(source.transport),
            remote: source.remote,
            local: source.local,
            number: source.connection.map(|c| c.0),
        },
    )
}

/// The transport's view of a flow of this front end.
pub(crate) fn source_of(flow: Flow) -> Source {
    let c = flow.conn();
    Source {
        transport: kind_of(c.transport),
        remote: c.remote,
        local: c.local,
        connection: c.number.map(ConnectionId),
    }
}

/// A connection of this front end closed.
pub(crate) fn connection_of(id: ConnectionId) -> Connection {
    Connection {
        fe: FrontEnd::LOCAL,
        number: id.0,
    }
}

pub(crate) fn transport_of(kind: TransportKind) -> Transport {
    match kind {
        TransportKind::Udp => Transport::Udp,
        TransportKind::Tcp => Transport::Tcp,
        TransportKind::Tls => Transport::Tls,
    }
}

pub(crate) fn kind_of(transport: Transport) -> TransportKind {
    match transport {
        Transport::Udp => TransportKind::Udp,
        Transport::Tcp => TransportKind::Tcp,
        Transport::Tls => TransportKind::Tls,
    }
}
