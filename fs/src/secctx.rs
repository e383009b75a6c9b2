//! virtiofsd's `--security-label`: the security context (an SELinux label)
//! a guest sends with CREATE, MKDIR, MKNOD and SYMLINK once
//! FUSE_SECURITY_CTX is granted, parsed from the request's extension area.
//! Pure: the device applies it.

/// The first security context in a FUSE request's extension area (FUSE
/// 7.36+, sent when FUSE_SECURITY_CTX is granted): `ext` is the request's
/// last `total_extlen * 8` bytes. Each extension starts with `{size, type}`;
/// a type of 1..=31 is a `fuse_secctx_header` counting its contexts, each a
/// `{size, padding}` then the xattr name (NUL-terminated) then `size` bytes
/// of value. Returns (name, value); None if there is none or it is
/// malformed.
pub fn security_context(ext: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let word =
        |at: usize| -> Option<usize> { Some(u32::from_le_bytes(ext.get(at..at + 4)?.try_into().ok()?) as usize) };
    let mut at = 0;
    while at + 8 <= ext.len() {
        let (size, kind) = (word(at)?, word(at + 4)?);
        if size < 8 || at + size > ext.len() {
            return None;
        }
        if (1..=31).contains(&kind) {
            let body = &ext[at + 8..at + size];
            let value_len = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
            let rest = body.get(8..)?;
            let nul = rest.iter().position(|&b| b == 0)?;
            let value = rest.get(nul + 1..nul + 1 + value_len)?;
            return Some((rest[..nul].to_vec(), value.to_vec()));
        }
        at += size;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::security_context;

    fn ext(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut body = [&(value.len() as u32).to_le_bytes()[..], &[0; 4], name, b"\0", value].concat();
        while (8 + body.len()) % 8 != 0 {
            body.push(0);
        }
        [&((8 + body.len()) as u32).to_le_bytes()[..], &1u32.to_le_bytes(), &body].concat()
    }

    #[test]
    fn parses_and_rejects() {
        let e = ext(b"security.selinux", b"system_u:object_r:container_file_t:s0\0");
        assert_eq!(
            security_context(&e),
            Some((
                b"security.selinux".to_vec(),
                b"system_u:object_r:container_file_t:s0\0".to_vec()
            ))
        );
        // Another extension first (supplementary groups, type 32), then ours.
        let groups = [&16u32.to_le_bytes()[..], &32u32.to_le_bytes(), &[0; 8]].concat();
        assert!(security_context(&[groups.clone(), e.clone()].concat()).is_some());
        assert_eq!(security_context(&groups), None);
        assert_eq!(security_context(&e[..e.len() - 8]), None, "truncated");
        assert_eq!(security_context(&[0xff; 16]), None);
        assert_eq!(security_context(&[]), None);
    }
}
