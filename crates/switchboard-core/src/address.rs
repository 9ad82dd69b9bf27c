//! User addresses: `alice@example.com` or `sip:alice@example.com`.

use std::fmt;

/// A user's address of record, normalised to lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub user: String,
    pub domain: String,
}

#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a user address: write alice@example.com or sip:alice@example.com")]
pub struct AddressError(pub String);

impl Address {
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        let t = s.trim();
        let t = t
            .strip_prefix("sip:")
            .or_else(|| t.strip_prefix("SIP:"))
            .unwrap_or(t);
        let (user, domain) = t.split_once('@').ok_or_else(|| AddressError(s.into()))?;
        let user_ok = !user.is_empty()
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c));
        let domain_ok = !domain.is_empty()
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && !domain.starts_with(['.', '-']);
        if !user_ok || !domain_ok {
            return Err(AddressError(s.into()));
        }
        Ok(Address {
            user: user.to_ascii_lowercase(),
            domain: domain.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.domain)
    }
}
