//! The other documents NOTIFYs carry: watcher information (RFC 3858) and resource-list
//! meta-information in `multipart/related` (RFC 4662 §5, RFC 2387).

use crate::pidf::escape;

/// One watcher in a watcher-information document.
pub(crate) struct WatcherEntry {
    pub id: String,
    pub uri: String,
    /// RFC 3858 §4.4: pending | active | terminated.
    pub status: &'static str,
    /// What brought it there: subscribe | approved | rejected.
    pub event: &'static str,
}

/// RFC 3858: the full list of `resource`'s watchers.
pub(crate) fn watcherinfo(resource: &str, version: u32, watchers: &[WatcherEntry]) -> String {
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<watcherinfo xmlns=\"urn:ietf:params:xml:ns:watcherinfo\" version=\"{version}\" state=\"full\">\n <watcher-list resource=\"{}\" package=\"presence\">\n",
        escape(resource)
    );
    for w in watchers {
        x.push_str(&format!(
            "  <watcher id=\"{}\" event=\"{}\" status=\"{}\">{}</watcher>\n",
            escape(&w.id),
            w.event,
            w.status,
            escape(&w.uri)
        ));
    }
    x.push_str(" </watcher-list>\n</watcherinfo>\n");
    x
}

/// One resource of a list notification; `pidf` is absent for a resource shown without
/// state (RFC 4662 §5.2: an instance only when there is state to send).
pub(crate) struct ListResource {
    pub uri: String,
    pub name: Option<String>,
    pub content_type: &'static str,
    pub body: String,
}

/// RFC 4662 §5: the RLMI document plus one body part per resource. Returns the
/// Content-Type header value and the body.
pub(crate) fn rlmi(
    list_uri: &str,
    version: u32,
    full: bool,
    resources: &[ListResource],
    lync: bool,
) -> (String, String) {
    let boundary = format!("sb-{:016x}", rand::random::<u64>());
    // Lync clients (category parts) read parts with libpurple's MIME reader, which
    // refuses `binary` and drops the two characters before each part's closing CRLF.
    let (cte, tail) = if lync {
        ("", "\r\n\r\n")
    } else {
        ("Content-Transfer-Encoding: binary\r\n", "\r\n")
    };
    let mut list = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<list xmlns=\"urn:ietf:params:xml:ns:rlmi\" uri=\"{}\" version=\"{version}\" fullState=\"{full}\">\n",
        escape(list_uri)
    );
    let mut parts = String::new();
    for (i, r) in resources.iter().enumerate() {
        let cid = format!("r{i}.{version}@switchboard");
        list.push_str(&format!(" <resource uri=\"{}\">", escape(&r.uri)));
        if let Some(n) = &r.name {
            list.push_str(&format!("<name>{}</name>", escape(n)));
        }
        list.push_str(&format!(
            "<instance id=\"{i}\" state=\"active\" cid=\"{cid}\"/></resource>\n"
        ));
        parts.push_str(&format!(
            "--{boundary}\r\n{cte}Content-ID: <{cid}>\r\nContent-Type: {};charset=\"UTF-8\"\r\n\r\n{}{tail}",
            r.content_type, r.body
        ));
    }
    list.push_str("</list>\n");
    let body = format!(
        "--{boundary}\r\n{cte}Content-ID: <rlmi@switchboard>\r\nContent-Type: application/rlmi+xml;charset=\"UTF-8\"\r\n\r\n{list}{tail}{parts}--{boundary}--\r\n"
    );
    let ct = format!(
        "multipart/related;type=\"application/rlmi+xml\";start=\"<rlmi@switchboard>\";boundary=\"{boundary}\""
    );
    (ct, body)
}
