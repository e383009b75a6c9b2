//! virtiofsd's `--xattrmap`: rules that rename, pass or hide extended
//! attribute names between the guest and the host (virtiofsd's
//! doc/xattr-mapping.md). Pure: parsing and name mapping, no I/O.
//!
//! A rule is `<sep>type<sep>scope<sep>key<sep>prepend<sep>`, the separator
//! being its first non-blank character. `type` is `prefix`, `ok`, `bad` or
//! `unsupported`; `scope` is `client` (names the guest sends: get, set,
//! remove; matched on `key`), `server` (names the host lists; matched on
//! `prepend`) or `all`. `:map:key:prepend:` is shorthand for the usual
//! three rules and must come last. The first matching rule decides.

/// What a rule does with a matching name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Prefix,
    Ok,
    Bad,
    Unsupported,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    kind: Kind,
    client: bool,
    server: bool,
    key: Vec<u8>,
    prepend: Vec<u8>,
}

/// A parsed mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XattrMap {
    rules: Vec<Rule>,
}

/// The outcome for a name the guest sent.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientName {
    /// Use this host name.
    Host(Vec<u8>),
    /// Refuse with EPERM (`bad`, or no rule matched).
    Denied,
    /// Refuse with ENOTSUP (`unsupported`).
    Unsupported,
}

impl XattrMap {
    pub fn parse(text: &str) -> Result<XattrMap, String> {
        let mut rules = Vec::new();
        let mut rest = text.trim_start();
        let mut n = 0;
        while let Some(sep) = rest.chars().next() {
            n += 1;
            let body = &rest[sep.len_utf8()..];
            let mut fields = body.splitn(5, sep);
            let mut field = |what: &str| {
                fields.next().ok_or_else(|| {
                    format!("--xattrmap rule {n}: missing {what} (rules look like :type:scope:key:prepend:)")
                })
            };
            let kind = field("type")?;
            if kind == "map" {
                let key = field("key")?.as_bytes().to_vec();
                let prepend = field("prepend")?.as_bytes().to_vec();
                if fields.any(|f| !f.trim().is_empty()) {
                    return Err(format!("--xattrmap rule {n}: the map rule must be the last one"));
                }
                rules.extend(expand_map(key, prepend));
                return Ok(XattrMap { rules });
            }
            let kind = match kind {
                "prefix" => Kind::Prefix,
                "ok" => Kind::Ok,
                "bad" => Kind::Bad,
                "unsupported" => Kind::Unsupported,
                other => {
                    return Err(format!(
                        "--xattrmap rule {n}: type {other:?} is not one of prefix, ok, bad, unsupported, map"
                    ))
                }
            };
            let (client, server) = match field("scope")? {
                "client" => (true, false),
                "server" => (false, true),
                "all" => (true, true),
                other => {
                    return Err(format!(
                        "--xattrmap rule {n}: scope {other:?} is not one of client, server, all"
                    ))
                }
            };
            let key = field("key")?.as_bytes().to_vec();
            let prepend = field("prepend")?.as_bytes().to_vec();
            rules.push(Rule {
                kind,
                client,
                server,
                key,
                prepend,
            });
            rest = fields.next().unwrap_or("").trim_start();
        }
        if rules.is_empty() {
            return Err("--xattrmap: no rules given".into());
        }
        Ok(XattrMap { rules })
    }

    /// The host name for a name from the guest.
    pub fn client(&self, name: &[u8]) -> ClientName {
        match self.rules.iter().find(|r| r.client && name.starts_with(&r.key)) {
            Some(Rule {
                kind: Kind::Prefix,
                prepend,
                ..
            }) => ClientName::Host([prepend.as_slice(), name].concat()),
            Some(Rule { kind: Kind::Ok, .. }) => ClientName::Host(name.to_vec()),
            Some(Rule {
                kind: Kind::Unsupported,
                ..
            }) => ClientName::Unsupported,
            Some(Rule { kind: Kind::Bad, .. }) | None => ClientName::Denied,
        }
    }

    /// The guest's name for a host name, or None to hide it.
    pub fn server<'a>(&self, name: &'a [u8]) -> Option<&'a [u8]> {
        match self.rules.iter().find(|r| r.server && name.starts_with(&r.prepend))? {
            Rule {
                kind: Kind::Prefix,
                prepend,
                ..
            } => Some(&name[prepend.len()..]),
            Rule { kind: Kind::Ok, .. } => Some(name),
            _ => None,
        }
    }

    /// A listxattr reply (NUL-terminated names) as the guest sees it.
    pub fn server_list(&self, list: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(list.len());
        for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if let Some(n) = self.server(name) {
                out.extend_from_slice(n);
                out.push(0);
            }
        }
        out
    }
}

/// `:map:key:prepend:` as virtiofsd expands it: prefix what matches; if
/// a key is given, hide the host's unprefixed ones and let the rest
/// through, else hide everything else.
fn expand_map(key: Vec<u8>, prepend: Vec<u8>) -> Vec<Rule> {
    let rule = |kind, key: &[u8], prepend: &[u8]| Rule {
        kind,
        client: true,
        server: true,
        key: key.to_vec(),
        prepend: prepend.to_vec(),
    };
    let mut rules = vec![rule(Kind::Prefix, &key, &prepend)];
    if key.is_empty() {
        rules.push(rule(Kind::Bad, b"", b""));
    } else {
        rules.push(rule(Kind::Bad, &prepend, &key));
        rules.push(rule(Kind::Ok, b"", b""));
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_everything() {
        // virtiofsd's first documented example.
        let m = XattrMap::parse(":prefix:all::user.virtiofs.::bad:all:::").unwrap();
        assert_eq!(
            m.client(b"security.selinux"),
            ClientName::Host(b"user.virtiofs.security.selinux".to_vec())
        );
        assert_eq!(
            m.server(b"user.virtiofs.security.selinux"),
            Some(&b"security.selinux"[..])
        );
        assert_eq!(
            m.server(b"user.other"),
            None,
            "host attributes without the prefix are hidden"
        );
        assert_eq!(
            m.server_list(b"user.virtiofs.a\0user.b\0user.virtiofs.c\0"),
            b"a\0c\0".to_vec()
        );
    }

    #[test]
    fn trusted_to_user_with_separators_and_newlines() {
        let m = XattrMap::parse(
            "/prefix/all/trusted./user.virtiofs./\n /bad/server//trusted./\n /bad/client/user.virtiofs.//\n /ok/all///",
        )
        .unwrap();
        assert_eq!(
            m.client(b"trusted.overlay.opaque"),
            ClientName::Host(b"user.virtiofs.trusted.overlay.opaque".to_vec())
        );
        assert_eq!(m.client(b"user.virtiofs.x"), ClientName::Denied);
        assert_eq!(m.client(b"user.mine"), ClientName::Host(b"user.mine".to_vec()));
        assert_eq!(m.server(b"trusted.host"), None);
        assert_eq!(m.server(b"user.mine"), Some(&b"user.mine"[..]));
    }

    #[test]
    fn map_shorthand() {
        let m = XattrMap::parse(":map:security.:user.virtiofs.:").unwrap();
        assert_eq!(
            m.client(b"security.selinux"),
            ClientName::Host(b"user.virtiofs.security.selinux".to_vec())
        );
        assert_eq!(m.client(b"user.virtiofs.security.x"), ClientName::Denied);
        assert_eq!(m.client(b"user.a"), ClientName::Host(b"user.a".to_vec()));
        assert_eq!(
            m.server(b"security.selinux"),
            None,
            "the host's own security.* is hidden"
        );
        let all = XattrMap::parse(":map::user.virtiofs.:").unwrap();
        assert_eq!(
            all.client(b"trusted.x"),
            ClientName::Host(b"user.virtiofs.trusted.x".to_vec())
        );
        assert_eq!(all.server(b"user.plain"), None);
    }

    #[test]
    fn bad_input() {
        assert!(XattrMap::parse("").is_err());
        assert!(XattrMap::parse(":nope:all:::").unwrap_err().contains("type \"nope\""));
        assert!(XattrMap::parse(":ok:everywhere:::").unwrap_err().contains("scope"));
        assert!(XattrMap::parse(":ok:all:").unwrap_err().contains("missing"));
        assert!(XattrMap::parse(":map:a:b: :ok:all:::").unwrap_err().contains("last"));
        let m = XattrMap::parse(":unsupported:client:system.:::ok:client:::").unwrap();
        assert_eq!(m.client(b"system.posix_acl_access"), ClientName::Unsupported);
        // No rule for a name: refused, not a crash.
        let m = XattrMap::parse(":ok:client:user.:").unwrap();
        assert_eq!(m.client(b"trusted.x"), ClientName::Denied);
        assert_eq!(m.server(b"user.x"), None);
    }
}
