//! Just enough HTTP/1.1 for a local control socket: one request per
//! connection, Content-Length bodies, bounded sizes, JSON replies.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;
const MAX_HEADER_LINES: usize = 100;
const MAX_LINE: usize = 8 * 1024;

pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    /// Bytes the client sent after the request (for connections that
    /// leave HTTP: gvproxy's `/tunnel` and `/connect`).
    pub rest: Vec<u8>,
}

/// A failure that becomes a 4xx reply.
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

pub fn error(status: u16, message: impl Into<String>) -> HttpError {
    HttpError {
        status,
        message: message.into(),
    }
}

async fn line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<String, HttpError> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| error(400, e.to_string()))?;
    if n == 0 {
        return Err(error(400, "connection closed mid-request"));
    }
    if buf.len() > MAX_LINE {
        return Err(error(431, "header line too long"));
    }
    String::from_utf8(buf)
        .map(|s| s.trim_end().to_string())
        .map_err(|_| error(400, "request is not UTF-8"))
}

pub async fn read_request<S: tokio::io::AsyncRead + Unpin>(stream: S) -> Result<Request, HttpError> {
    let mut r = BufReader::new(stream);
    let request_line = line(&mut r).await?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(error(400, format!("malformed request line {request_line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(error(505, "only HTTP/1.x is supported"));
    }
    let mut length = 0usize;
    for i in 0.. {
        if i == MAX_HEADER_LINES {
            return Err(error(431, "too many header lines"));
        }
        let header = line(&mut r).await?;
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| error(400, "bad Content-Length"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(error(411, "chunked bodies are not supported; send Content-Length"));
            }
        }
    }
    if length > MAX_BODY {
        return Err(error(
            413,
            format!("body of {length} bytes is over the {MAX_BODY}-byte limit"),
        ));
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)
        .await
        .map_err(|_| error(400, "body shorter than Content-Length"))?;
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        body,
        rest: r.buffer().to_vec(),
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

pub async fn write_response<S: tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    status: u16,
    body: &str,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
