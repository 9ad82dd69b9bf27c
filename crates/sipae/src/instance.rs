//! The endpoint identity a Lync client registers (MS-SIPAE §3.3.5.2, MS-SIPRE §3.2): its
//! `+sip.instance` is a name-based UUID (SHA-1, version 5 layout) of its `epid` in the
//! namespace `fcacfb03-8a73-46ef-91b1-e5ebeeaba4fe`. Microsoft GUIDs keep their first three
//! fields little-endian in memory, and the derivation hashes and reads them that way, so
//! the result is not the RFC 4122 §4.3 UUID of the same name.

use sha1::{Digest, Sha1};

/// The namespace as the hash sees it: `fcacfb03-8a73-46ef-91b1-e5ebeeaba4fe` with
/// time_low, time_mid and time_hi in little-endian byte order.
const EPID_NAMESPACE: [u8; 16] = [
    0x03, 0xfb, 0xac, 0xfc, 0x73, 0x8a, 0xef, 0x46, 0x91, 0xb1, 0xe5, 0xeb, 0xee, 0xab, 0xa4, 0xfe,
];

/// The `+sip.instance` UUID (`xxxxxxxx-xxxx-5xxx-yxxx-xxxxxxxxxxxx`, lower case) derived
/// from an endpoint id.
pub fn instance_from_epid(epid: &str) -> String {
    let mut h = Sha1::new();
    h.update(EPID_NAMESPACE);
    h.update(epid.as_bytes());
    let d = h.finalize();
    let time_low = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
    let time_mid = u16::from_le_bytes([d[4], d[5]]);
    let time_hi = (u16::from_le_bytes([d[6], d[7]]) & 0x0fff) | 0x5000;
    let clock_hi = (d[8] & 0x3f) | 0x80;
    let node: String = d[10..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{time_low:08x}-{time_mid:04x}-{time_hi:04x}-{clock_hi:02x}{:02x}-{node}",
        d[9]
    )
}

/// Does a registered `+sip.instance` value (`"<urn:uuid:…>"`, quoted or not) belong to
/// the endpoint `epid`?
pub fn instance_matches_epid(instance: &str, epid: &str) -> bool {
    let uuid = instance
        .trim()
        .trim_matches('"')
        .trim_start_matches('<')
        .trim_end_matches('>');
    let uuid = uuid
        .strip_prefix("urn:uuid:")
        .or_else(|| uuid.strip_prefix("URN:UUID:"))
        .unwrap_or(uuid);
    uuid.eq_ignore_ascii_case(&instance_from_epid(epid))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pidgin-sipe's REGISTER in the captured sign-in: `epid=b34afb6ebb23` with
    /// `+sip.instance="<urn:uuid:085e0bd8-031c-5a0d-8d9a-f149aae6954a>"`.
    #[test]
    fn derives_the_instance_pidgin_sipe_registers() {
        assert_eq!(
            instance_from_epid("b34afb6ebb23"),
            "085e0bd8-031c-5a0d-8d9a-f149aae6954a"
        );
        assert!(instance_matches_epid(
            "\"<urn:uuid:085e0bd8-031c-5a0d-8d9a-f149aae6954a>\"",
            "b34afb6ebb23"
        ));
        assert!(!instance_matches_epid(
            "\"<urn:uuid:085e0bd8-031c-5a0d-8d9a-f149aae6954b>\"",
            "b34afb6ebb23"
        ));
        assert!(!instance_matches_epid(
            "\"<urn:uuid:085e0bd8-031c-5a0d-8d9a-f149aae6954a>\"",
            "b34afb6ebb24"
        ));
    }
}
