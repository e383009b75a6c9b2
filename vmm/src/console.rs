//! The guest console protocol: guest-init prints `FERRY_START` before the
//! workload runs and `FERRY_EXIT code=N [error=KIND]` after it ends.

/// What one console line means to the host.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsoleLine<'a> {
    /// The workload is about to start; what follows is its output.
    Start,
    /// The guest finished: the workload's exit code, or a setup failure kind.
    Exit { code: i32, error: Option<&'a str> },
    /// Anything else (kernel messages, init diagnostics, workload output).
    Text(&'a str),
}

/// Classifies one line (without its line ending; a trailing `\r` from the
/// serial line discipline is ignored).
pub fn parse_line(line: &str) -> ConsoleLine<'_> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line == "FERRY_START" {
        return ConsoleLine::Start;
    }
    if let Some(rest) = line.strip_prefix("FERRY_EXIT ") {
        let mut code = None;
        let mut error = None;
        for field in rest.split(' ') {
            match field.split_once('=') {
                Some(("code", v)) => code = v.parse().ok(),
                Some(("error", v)) => error = Some(v),
                _ => {}
            }
        }
        if let Some(code) = code {
            return ConsoleLine::Exit { code, error };
        }
    }
    ConsoleLine::Text(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_protocol_lines() {
        assert_eq!(parse_line("FERRY_START\r"), ConsoleLine::Start);
        assert_eq!(
            parse_line("FERRY_EXIT code=7"),
            ConsoleLine::Exit { code: 7, error: None }
        );
        assert_eq!(
            parse_line("FERRY_EXIT code=125 error=config\r"),
            ConsoleLine::Exit {
                code: 125,
                error: Some("config")
            }
        );
        assert_eq!(parse_line("FERRY_EXIT code=x"), ConsoleLine::Text("FERRY_EXIT code=x"));
        assert_eq!(parse_line("hello"), ConsoleLine::Text("hello"));
    }
}
