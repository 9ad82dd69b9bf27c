//! Socket-level integration tests: a real server on ephemeral loopback ports, driven
//! over UDP, TCP and TLS. One test binary (fewer links on a 2-core machine).

mod cli;
mod cli_postgres;
mod guard;
mod http_edge;
mod im;
mod im_caps;
mod lync;
mod lync_guard;
mod lync_im;
mod pool;
mod pool_faults;
mod presence;
mod presence_caps;
mod registration;
mod relay;
mod robustness;
mod routing;
mod support;
// The presence service's data layer that fails on demand, shared with its own tests.
#[path = "../../../switchboard-presence/tests/common/data.rs"]
mod test_data;
