//! TLS to PostgreSQL, as the URL asks for it (libpq's parameter names).
//!
//! - `sslmode=require`, `verify-ca` or `verify-full`: TLS, with the server's certificate
//!   **always verified** (chain and host name) against `sslrootcert=FILE` (PEM), else the
//!   system's trust store. libpq's `require` alone would encrypt without checking whom
//!   to; a pool's database link crosses a network, so we never do that: a server whose
//!   certificate is not trusted is refused with a clear error. `verify-ca` is checked as
//!   `verify-full` (rustls always checks the name).
//! - `sslmode=prefer` (the default) or `disable`: no TLS, as libpq does with a server
//!   that offers none. For loopback or a trusted network only.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, and no `sslrootcert`:
//! both are read here and taken out of what it parses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use switchboard_core::DataError;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Where the system keeps its trusted authorities (Debian's ca-certificates).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How connections reach the server.
#[derive(Clone)]
pub(super) enum Link {
    Plain,
    Tls(MakeRustlsConnect),
}

/// Reads the TLS wishes out of `url`: the URL as tokio-postgres takes it, and the link.
pub(super) fn read(url: &str) -> Result<(String, Link), DataError> {
    let (rest, mode, root) = strip(url);
    match mode.as_deref() {
        None | Some("prefer" | "disable") if root.is_some() => {
            Err(bad("sslrootcert needs sslmode=verify-full (or require)"))
        }
        None | Some("prefer" | "disable") => Ok((rest, Link::Plain)),
        Some("require" | "verify-ca" | "verify-full") => {
            let file = root.unwrap_or_else(|| PathBuf::from(SYSTEM_ROOTS));
            Ok((
                with_param(&rest, "sslmode", "require"),
                Link::Tls(connector(&file)?),
            ))
        }
        Some(other) => Err(bad(&format!("unknown sslmode {other:?}"))),
    }
}

/// A rustls connector trusting the authorities in `file`.
fn connector(file: &Path) -> Result<MakeRustlsConnect, DataError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| bad(&format!("cannot read {}: {e}", file.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(&format!("{}: {e}", file.display())))?;
        roots
            .add(cert)
            .map_err(|e| bad(&format!("{}: {e}", file.display())))?;
    }
    if roots.is_empty() {
        return Err(bad(&format!("no certificate in {}", file.display())));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(&e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn bad(what: &str) -> DataError {
    DataError::Backend(format!("PostgreSQL TLS: {what}"))
}

/// `url` without its `sslmode` and `sslrootcert` parameters, and their values. Both
/// forms tokio-postgres reads are handled: `postgres://…?k=v&…` and `k=v k=v`.
fn strip(url: &str) -> (String, Option<String>, Option<PathBuf>) {
    let (mut mode, mut root) = (None, None);
    // Takes our two parameters' values; says whether `pair` stays for tokio-postgres.
    let mut keep = |pair: &str| -> bool {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = Some(decode(v)),
            Some(("sslrootcert", v)) => root = Some(PathBuf::from(decode(v))),
            _ => return true,
        }
        false
    };
    let rest = if url.contains("://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query.split('&').filter(|p| keep(p)).collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_owned(),
        }
    } else {
        let kept: Vec<&str> = url.split_whitespace().filter(|p| keep(p)).collect();
        kept.join(" ")
    };
    (rest, mode, root)
}

/// `url` with `key=value` added.
fn with_param(url: &str, key: &str, value: &str) -> String {
    if !url.contains("://") {
        return format!("{url} {key}={value}");
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

/// Percent-decoding of a URL query value (a path may be written `%2Fetc%2F…`).
fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_wishes_are_read_out_of_either_form() {
        let (rest, mode, root) = strip(
            "postgres://u@h:5/db?sslmode=verify-full&sslrootcert=%2Fca.pem&connect_timeout=2",
        );
        assert_eq!(rest, "postgres://u@h:5/db?connect_timeout=2");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root, Some(PathBuf::from("/ca.pem")));
        let (rest, mode, root) = strip("host=h sslmode=require dbname=db");
        assert_eq!(rest, "host=h dbname=db");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(root, None);
        assert_eq!(
            strip("postgres://h/db?sslmode=disable").0,
            "postgres://h/db"
        );
    }

    #[test]
    fn plain_unless_asked_and_clear_errors_otherwise() {
        assert!(matches!(read("postgres://h/db"), Ok((_, Link::Plain))));
        assert!(matches!(
            read("postgres://h/db?sslmode=prefer"),
            Ok((_, Link::Plain))
        ));
        for bad_url in [
            "postgres://h/db?sslmode=sometimes",
            "postgres://h/db?sslrootcert=/ca.pem",
            "postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        ] {
            assert!(
                matches!(read(bad_url), Err(DataError::Backend(_))),
                "{bad_url}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let url = format!(
            "postgres://h/db?sslmode=require&sslrootcert={}",
            empty.display()
        );
        assert!(matches!(read(&url), Err(DataError::Backend(e)) if e.contains("no certificate")));
    }
}
