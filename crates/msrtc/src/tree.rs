//! A small element tree over quick-xml: the Lync documents are small (a few KB) and
//! their readers want "the `availability` child of the `state` child", which a tree
//! answers more plainly than a stream. Names are local (namespace prefixes dropped):
//! clients write the same documents with different prefixes.

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::MsrtcError;

/// One element: local name, attributes (local names), children, text, and its inner
/// XML as written (to keep a publication's payload byte for byte).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
    pub inner: String,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The descendant at `a/b/c`.
    pub fn path(&self, path: &str) -> Option<&Element> {
        path.split('/').try_fold(self, |e, step| e.child(step))
    }

    /// The trimmed text of the descendant at `path`, if present and not empty.
    pub fn text_at(&self, path: &str) -> Option<&str> {
        self.path(path)
            .map(|e| e.text.trim())
            .filter(|t| !t.is_empty())
    }
}

fn local(name: &[u8]) -> String {
    let l = match name.iter().rposition(|b| *b == b':') {
        Some(i) => &name[i + 1..],
        None => name,
    };
    String::from_utf8_lossy(l).into_owned()
}

/// XML 1.0 §2.2 `Char`: the characters a document may hold at all, raw or as a
/// character reference. Clients' XML readers refuse a document with any other (a NUL, most
/// C0 controls, U+FFFE, U+FFFF), so none is read and none is written.
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// XML 1.0 §2.3 `Name`. Element names are written back (a C3P response repeats its
/// command's name), so one that is not a name is refused, whole and without its prefix.
fn is_xml_name(name: &[u8]) -> bool {
    fn start(c: char) -> bool {
        matches!(c, ':' | 'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
            | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
            | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}'
            | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
            | '\u{10000}'..='\u{EFFFF}')
    }
    fn rest(c: char) -> bool {
        start(c)
            || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
    }
    let Ok(s) = std::str::from_utf8(name) else {
        return false;
    };
    let mut chars = s.chars();
    chars.next().is_some_and(start) && chars.all(rest)
}

fn not_xml_char() -> MsrtcError {
    MsrtcError::Xml("a character XML does not allow".into())
}

fn open(e: &quick_xml::events::BytesStart<'_>) -> Result<Element, MsrtcError> {
    let name = e.name();
    let name = name.as_ref();
    let local_name = name.rsplit(|b| *b == b':').next().unwrap_or(name);
    if !is_xml_name(name) || !is_xml_name(local_name) {
        return Err(MsrtcError::Xml(format!(
            "<{}> is not an element name",
            String::from_utf8_lossy(name)
        )));
    }
    let mut el = Element {
        name: local(name),
        ..Element::default()
    };
    for a in e.attributes() {
        let a = a.map_err(|err| MsrtcError::Xml(err.to_string()))?;
        let key = a.key.as_ref();
        if key.starts_with(b"xmlns") {
            continue;
        }
        let value = a
            .unescape_value()
            .map_err(|err| MsrtcError::Xml(err.to_string()))?;
        if !value.chars().all(is_xml_char) {
            return Err(not_xml_char());
        }
        el.attrs.push((local(key), value.into_owned()));
    }
    Ok(el)
}

/// Parses a whole document into its root element. Bounded in depth (a hostile body
/// cannot make the stack grow without limit).
pub fn parse(body: &[u8]) -> Result<Element, MsrtcError> {
    const MAX_DEPTH: usize = 32;
    // Raw characters here; character references where they are resolved.
    if body
        .utf8_chunks()
        .any(|c| !c.valid().chars().all(is_xml_char))
    {
        return Err(not_xml_char());
    }
    let mut r = Reader::from_reader(body);
    let mut stack: Vec<(Element, usize)> = Vec::new();
    let mut root: Option<Element> = None;
    let mut buf = Vec::new();
    loop {
        let before = r.buffer_position() as usize;
        let ev = r
            .read_event_into(&mut buf)
            .map_err(|e| MsrtcError::Xml(e.to_string()))?;
        match ev {
            Event::Start(ref e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(MsrtcError::Xml("nested too deeply".into()));
                }
                let el = open(e)?;
                stack.push((el, r.buffer_position() as usize));
            }
            Event::Empty(ref e) => {
                let el = open(e)?;
                match stack.last_mut() {
                    Some((parent, _)) => parent.children.push(el),
                    None if root.is_none() => root = Some(el),
                    None => return Err(MsrtcError::Xml("more than one root element".into())),
                }
            }
            Event::Text(t) => {
                if let Some((el, _)) = stack.last_mut() {
                    let text = t.decode().map_err(|e| MsrtcError::Xml(e.to_string()))?;
                    el.text.push_str(&text);
                }
            }
            Event::CData(t) => {
                if let Some((el, _)) = stack.last_mut() {
                    el.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::GeneralRef(g) => {
                let name = g.decode().map_err(|e| MsrtcError::Xml(e.to_string()))?;
                let c = match name.as_ref() {
                    "amp" => Some('&'),
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "quot" => Some('"'),
                    "apos" => Some('\''),
                    _ => g.resolve_char_ref().ok().flatten(),
                };
                let Some(c) = c else {
                    return Err(MsrtcError::Xml(format!("unknown entity &{name};")));
                };
                if !is_xml_char(c) {
                    return Err(not_xml_char());
                }
                if let Some((el, _)) = stack.last_mut() {
                    el.text.push(c);
                }
            }
            Event::End(_) => {
                let Some((mut el, start)) = stack.pop() else {
                    return Err(MsrtcError::Xml("unbalanced end tag".into()));
                };
                if let Some(inner) = body.get(start..before) {
                    el.inner = String::from_utf8_lossy(inner).into_owned();
                }
                match stack.last_mut() {
                    Some((parent, _)) => parent.children.push(el),
                    None if root.is_none() => root = Some(el),
                    None => return Err(MsrtcError::Xml("more than one root element".into())),
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err(MsrtcError::Xml("document ends inside an element".into()));
    }
    root.ok_or_else(|| MsrtcError::Xml("no root element".into()))
}

/// Parses a document whose root element must be `name`.
pub fn parse_root(body: &[u8], name: &str) -> Result<Element, MsrtcError> {
    let root = parse(body)?;
    if root.name != name {
        return Err(MsrtcError::Unexpected(format!(
            "<{}> is not <{name}>",
            root.name
        )));
    }
    Ok(root)
}

/// Escapes text for an attribute value or element content. A character XML does not
/// allow at all (a NUL, most C0 controls, U+FFFE, U+FFFF), which no escape can carry,
/// becomes U+FFFD: one user's odd name must not make a document every client refuses.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if !is_xml_char(c) => out.push(char::REPLACEMENT_CHARACTER),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_attributes_text_and_inner_xml() {
        let doc = br#"<a:root xmlns:a="urn:x" k="v&amp;w"><b x:type="t">one &lt;two&gt;</b><c/></a:root>"#;
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "root");
        assert_eq!(root.attr("k"), Some("v&w"));
        let b = root.child("b").unwrap();
        assert_eq!(b.attr("type"), Some("t"));
        assert_eq!(b.text, "one <two>");
        assert_eq!(root.inner, r#"<b x:type="t">one &lt;two&gt;</b><c/>"#);
        assert!(root.child("c").is_some());
    }

    #[test]
    fn refuses_broken_documents() {
        for bad in [
            &b"<a><b></a>"[..],
            b"<a>",
            b"",
            b"<a/><b/>",
            b"<a>&bogus;</a>",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(parse(deep.as_bytes()).is_err());
    }

    /// Found by fuzzing (c3p_soap): an invitation whose focus-uri held raw NULs was read,
    /// and written back into every document naming it.
    #[test]
    fn refuses_characters_xml_does_not_allow() {
        for bad in [
            &b"<Conferencing><focus-uri>sip:a@x;gru\x01\0\0B</focus-uri></Conferencing>"[..],
            b"<a b=\"\x1f\"/>",
            b"<a>&#1;</a>",
            b"<a>&#x0;</a>",
            b"<a b=\"&#x1B;\"/>",
            b"<a>\xef\xbf\xbe</a>",
            b"<a\x01/>",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let ok = parse("<a b=\"&#9;&#x10000;\">\t&#xD;\u{FFFD}</a>".as_bytes()).unwrap();
        assert_eq!(ok.attr("b"), Some("\t\u{10000}"));
        assert_eq!(ok.text, "\t\r\u{FFFD}");
    }

    /// Found by fuzzing (c3p_soap): a command element named `getConf;x=y@z:cr\xe5…/`
    /// was read, and its name written back into a response that was not XML.
    #[test]
    fn refuses_what_is_not_an_element_name() {
        for bad in [
            &b"<request><getConf;x=y@z:cr\xe5\xe5/></request>"[..],
            b"<request><a/ b=\"1\"></a/></request>",
            b"<request><a:/></request>",
            b"<request><a:1b/></request>",
            b"<1a/>",
            b"<-a></-a>",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let ok = parse("<ns:r-1.x><_a\u{e9}\u{B7}/></ns:r-1.x>".as_bytes()).unwrap();
        assert_eq!(ok.name, "r-1.x");
        assert_eq!(ok.children[0].name, "_a\u{e9}\u{B7}");
    }

    /// Found by fuzzing (conference_info): a NUL or control character in a name made
    /// the conference document not XML.
    #[test]
    fn escape_writes_only_xml_characters() {
        let s = "a\0b\u{1}c\u{FFFE}d\te & <f>";
        let doc = format!("<x y=\"{}\">{}</x>", escape(s), escape(s));
        let root = parse(doc.as_bytes()).unwrap();
        let expected = "a\u{FFFD}b\u{FFFD}c\u{FFFD}d\te & <f>";
        assert_eq!(root.attr("y"), Some(expected));
        assert_eq!(root.text, expected);
    }
}
