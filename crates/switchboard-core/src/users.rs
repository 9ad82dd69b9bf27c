//! User accounts and the password-equivalent hashes sign-in checks against.

use sip_digest::{ha1, Algorithm};

use crate::Address;

/// Password-equivalent hashes; the password itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Digest HA1 with MD5, realm = the user's domain.
    pub ha1_md5: String,
    /// Digest HA1 with SHA-256, realm = the user's domain.
    pub ha1_sha256: String,
    /// NT hash: MD4(UTF-16LE(password)) (MS-NLMP §3.3.1 NTOWFv1), hex.
    pub nt_hash: String,
}

impl Credentials {
    pub fn derive(address: &Address, password: &str) -> Credentials {
        Credentials {
            ha1_md5: ha1(Algorithm::Md5, &address.user, &address.domain, password),
            ha1_sha256: ha1(Algorithm::Sha256, &address.user, &address.domain, password),
            // MS-NLMP §3.3.1 NTOWFv1, what the Lync dialect's NTLM sign-in checks against.
            nt_hash: hex::encode(ntlm::nt_hash(password)),
        }
    }

    pub fn ha1(&self, alg: Algorithm) -> &str {
        match alg {
            Algorithm::Md5 => &self.ha1_md5,
            Algorithm::Sha256 => &self.ha1_sha256,
        }
    }
}

/// One account.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserRecord {
    #[serde(serialize_with = "ser_address")]
    pub address: Address,
    pub display_name: Option<String>,
    pub enabled: bool,
    #[serde(skip)]
    pub credentials: Credentials,
    pub created_at: i64,
    pub updated_at: i64,
}

fn ser_address<S: serde::Serializer>(a: &Address, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&a.to_string())
}
