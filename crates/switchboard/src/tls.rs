//! TLS for SIP on 5061: the operator's certificate, or on first start a private CA and a
//! server certificate it signs, written into the data directory.
//!
//! Why a private CA rather than one self-signed certificate: clients that check names
//! (pidgin-sipe through NSS) reject a self-signed leaf whose keyUsage lacks keyCertSign
//! outright, but accept a CA-issued leaf once the CA is trusted; the CA file can be
//! handed to clients. Neither tested client sends SNI when dialling an IP address, so the
//! server has one default certificate and never requires SNI.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the generated files go, inside the data directory.
pub struct GeneratedPaths {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn generated_paths(data_dir: &Path) -> GeneratedPaths {
    let dir = data_dir.join("tls");
    GeneratedPaths {
        ca_cert: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

fn write_private(path: &Path, data: &str) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // The mode above applies only to a new file; one left readable is tightened before
    // the key goes in.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    f.write_all(data.as_bytes())?;
    Ok(())
}

/// Makes the CA and server certificate unless they exist. `names` are the DNS names and
/// IP addresses the certificate should cover.
pub fn ensure_generated(data_dir: &Path, names: &[String]) -> Result<GeneratedPaths> {
    let paths = generated_paths(data_dir);
    if paths.cert.exists() && paths.key.exists() {
        return Ok(paths);
    }
    std::fs::create_dir_all(paths.cert.parent().expect("tls dir has a parent"))
        .with_context(|| format!("cannot create {}", data_dir.join("tls").display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "Switchboard private CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // The CA key signs the one leaf below and is never written anywhere: the only private
    // key on disk is the server's.
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names
            .first()
            .cloned()
            .unwrap_or_else(|| "switchboard".into()),
    );
    for n in names {
        let san = match n.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(n.clone().try_into()?),
        };
        if !leaf.subject_alt_names.contains(&san) {
            leaf.subject_alt_names.push(san);
        }
    }
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    std::fs::write(&paths.ca_cert, ca_cert.pem())?;
    std::fs::write(&paths.cert, format!("{}{}", leaf_cert.pem(), ca_cert.pem()))?;
    write_private(&paths.key, &leaf_key.serialize_pem())?;
    Ok(paths)
}

/// Builds the rustls server configuration from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad TLS certificate file {}", cert.display()))?;
    if certs.is_empty() {
        bail!("no certificate found in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read TLS private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and private key do not match or are unsupported")?;
    Ok(Arc::new(config))
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// Every private key written is owner only, even over a readable file left behind;
    /// the CA key is not written at all.
    #[test]
    fn private_keys_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ensure_generated(dir.path(), &["localhost".into()]).unwrap();
        assert_eq!(mode(&paths.key), 0o600);
        for e in std::fs::read_dir(dir.path().join("tls")).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            if p != paths.key {
                assert!(!text.contains("PRIVATE KEY"), "{} holds a key", p.display());
            }
        }
        // A half-made set (certificate gone, key left readable) is made again, private.
        std::fs::remove_file(&paths.cert).unwrap();
        std::fs::set_permissions(&paths.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let paths = ensure_generated(dir.path(), &["localhost".into()]).unwrap();
        assert_eq!(mode(&paths.key), 0o600);
        server_config(&paths.cert, &paths.key).unwrap();
    }
}
