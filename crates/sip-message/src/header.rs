//! Header fields: names (with the compact forms of RFC 3261 §7.3.3 and later RFCs) and an
//! ordered list that keeps every value's raw text (MS-SIPAE signs values as written).

use std::fmt;

use crate::cursor::split_commas;

macro_rules! header_names {
    ($( $variant:ident => $canon:literal / $lower:literal $(, $compact:literal)? ;)*) => {
        /// A header field name. Known names are matched case-insensitively and through
        /// their compact forms; unknown ones keep their spelling and pass through untouched.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum HeaderName {
            $( $variant, )*
            Other(Box<str>),
        }

        impl HeaderName {
            /// Maps a name as it appears on the wire.
            pub fn from_wire(name: &str) -> HeaderName {
                if name.len() == 1 {
                    let c = name.as_bytes()[0].to_ascii_lowercase();
                    $( $( if c == $compact { return HeaderName::$variant; } )? )*
                }
                // Lower-case into a stack buffer and match once: this runs for every
                // header line of every message.
                let mut buf = [0u8; 24];
                if name.len() <= buf.len() {
                    let lower = &mut buf[..name.len()];
                    lower.copy_from_slice(name.as_bytes());
                    lower.make_ascii_lowercase();
                    match &*lower {
                        $( l if l == $lower.as_bytes() => return HeaderName::$variant, )*
                        _ => {}
                    }
                }
                HeaderName::Other(name.into())
            }

            /// Canonical (long) spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $( HeaderName::$variant => $canon, )*
                    HeaderName::Other(s) => s,
                }
            }
        }
    };
}

header_names! {
    Accept => "Accept" / "accept";
    AcceptContact => "Accept-Contact" / "accept-contact", b'a';
    Allow => "Allow" / "allow";
    AllowEvents => "Allow-Events" / "allow-events", b'u';
    AuthenticationInfo => "Authentication-Info" / "authentication-info";
    Authorization => "Authorization" / "authorization";
    CallId => "Call-ID" / "call-id", b'i';
    Contact => "Contact" / "contact", b'm';
    ContentEncoding => "Content-Encoding" / "content-encoding", b'e';
    ContentLength => "Content-Length" / "content-length", b'l';
    ContentType => "Content-Type" / "content-type", b'c';
    CSeq => "CSeq" / "cseq";
    Date => "Date" / "date";
    Event => "Event" / "event", b'o';
    Expires => "Expires" / "expires";
    From => "From" / "from", b'f';
    IdentityInfo => "Identity-Info" / "identity-info", b'n';
    Identity => "Identity" / "identity", b'y';
    MaxForwards => "Max-Forwards" / "max-forwards";
    MinExpires => "Min-Expires" / "min-expires";
    Path => "Path" / "path";
    ProxyAuthenticate => "Proxy-Authenticate" / "proxy-authenticate";
    ProxyAuthorization => "Proxy-Authorization" / "proxy-authorization";
    ProxyRequire => "Proxy-Require" / "proxy-require";
    RecordRoute => "Record-Route" / "record-route";
    ReferTo => "Refer-To" / "refer-to", b'r';
    ReferredBy => "Referred-By" / "referred-by", b'b';
    RejectContact => "Reject-Contact" / "reject-contact", b'j';
    RequestDisposition => "Request-Disposition" / "request-disposition", b'd';
    Require => "Require" / "require";
    Route => "Route" / "route";
    Server => "Server" / "server";
    SessionExpires => "Session-Expires" / "session-expires", b'x';
    Subject => "Subject" / "subject", b's';
    Supported => "Supported" / "supported", b'k';
    Timestamp => "Timestamp" / "timestamp";
    To => "To" / "to", b't';
    Unsupported => "Unsupported" / "unsupported";
    UserAgent => "User-Agent" / "user-agent";
    Via => "Via" / "via", b'v';
    Warning => "Warning" / "warning";
    WwwAuthenticate => "WWW-Authenticate" / "www-authenticate";
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for HeaderName {
    fn from(s: &str) -> Self {
        HeaderName::from_wire(s)
    }
}

impl HeaderName {
    fn matches(&self, other: &HeaderName) -> bool {
        match (self, other) {
            (HeaderName::Other(a), HeaderName::Other(b)) => a.eq_ignore_ascii_case(b),
            _ => self == other,
        }
    }
}

/// One header field line: its name and its value as written (line folding replaced by a
/// single space, RFC 3261 §7.3.1; surrounding white space trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    pub value: String,
}

/// Header fields in wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// The first line's value of this header.
    pub fn get(&self, name: &HeaderName) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.name.matches(name))
            .map(|h| h.value.as_str())
    }

    /// Every line's value, in order.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |h| h.name.matches(name))
            .map(|h| h.value.as_str())
    }

    /// Every comma-separated value across every line (RFC 3261 §7.3.1 equivalence).
    pub fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a str> + 'a {
        self.get_all(name).flat_map(split_commas)
    }

    pub fn count(&self, name: &HeaderName) -> usize {
        self.0.iter().filter(|h| h.name.matches(name)).count()
    }

    pub fn has(&self, name: &HeaderName) -> bool {
        self.0.iter().any(|h| h.name.matches(name))
    }

    pub fn push(&mut self, name: HeaderName, value: impl Into<String>) {
        self.0.push(Header {
            name,
            value: value.into(),
        });
    }

    /// Inserts before every other header field (a proxy's Via, RFC 3261 §16.6 step 8).
    pub fn push_front(&mut self, name: HeaderName, value: impl Into<String>) {
        self.0.insert(
            0,
            Header {
                name,
                value: value.into(),
            },
        );
    }

    /// Inserts before the first line of the same name, or at the end.
    pub fn insert_first(&mut self, name: HeaderName, value: impl Into<String>) {
        let at = self
            .0
            .iter()
            .position(|h| h.name.matches(&name))
            .unwrap_or(self.0.len());
        self.0.insert(
            at,
            Header {
                name,
                value: value.into(),
            },
        );
    }

    /// Replaces every line of `name` with one line holding `value`.
    pub fn set(&mut self, name: HeaderName, value: impl Into<String>) {
        let value = value.into();
        match self.0.iter().position(|h| h.name.matches(&name)) {
            Some(i) => {
                self.0[i].value = value;
                let mut seen = false;
                self.0.retain(|h| {
                    if h.name.matches(&name) {
                        let keep = !seen;
                        seen = true;
                        keep
                    } else {
                        true
                    }
                });
            }
            None => self.push(name, value),
        }
    }

    pub fn remove(&mut self, name: &HeaderName) {
        self.0.retain(|h| !h.name.matches(name));
    }

    /// Keeps the lines of `name` whose value passes `keep` (other headers untouched).
    pub fn retain_lines(&mut self, name: &HeaderName, mut keep: impl FnMut(&str) -> bool) {
        self.0.retain(|h| !h.name.matches(name) || keep(&h.value));
    }

    /// Removes the first comma-separated value of `name` and returns it (removing the top
    /// Via of a response, RFC 3261 §16.7 step 3).
    pub fn pop_first_value(&mut self, name: &HeaderName) -> Option<String> {
        let i = self.0.iter().position(|h| h.name.matches(name))?;
        let parts = split_commas(&self.0[i].value);
        if parts.len() <= 1 {
            return Some(self.0.remove(i).value);
        }
        let first = parts[0].to_owned();
        let rest = parts[1..].join(", ");
        self.0[i].value = rest;
        Some(first)
    }
}
