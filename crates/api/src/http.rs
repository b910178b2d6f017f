//! Just enough HTTP/1.1 for a local JSON API: one request per connection, bodies framed by
//! Content-Length, bounded sizes. Pure framing code shared by the daemon and the clients.

/// Largest request or status line plus headers we accept.
pub const MAX_HEAD: usize = 16 << 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed HTTP head: {0}")]
    Malformed(&'static str),
    #[error("HTTP head exceeds {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("body of {0} bytes exceeds the limit of {1}")]
    BodyTooLarge(usize, usize),
    #[error("chunked transfer encoding is not supported; send Content-Length")]
    Chunked,
}

/// The first line split in three (method/path/version or version/status/reason) and the body
/// length announced by the headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub first: [String; 3],
    pub content_length: usize,
}

/// Looks for a complete head in `buf`. Returns the head and the offset where the body starts,
/// or None when more bytes are needed.
pub fn parse_head(buf: &[u8], max_body: usize) -> Result<Option<(Head, usize)>, HttpError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
        return Ok(None);
    };
    if end > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Malformed("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().ok_or(HttpError::Malformed("empty"))?;
    let mut parts = first.splitn(3, ' ');
    let a = parts.next().ok_or(HttpError::Malformed("first line"))?;
    let b = parts.next().ok_or(HttpError::Malformed("first line"))?;
    let c = parts.next().unwrap_or("");
    let mut content_length = 0usize;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(HttpError::Malformed("header without ':'"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| HttpError::Malformed("Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(HttpError::Chunked);
        }
    }
    if content_length > max_body {
        return Err(HttpError::BodyTooLarge(content_length, max_body));
    }
    Ok(Some((
        Head {
            first: [a.to_string(), b.to_string(), c.to_string()],
            content_length,
        },
        end + 4,
    )))
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

pub fn response(status: u16, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: netd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_head() {
        let raw = b"POST /v1/networks HTTP/1.1\r\nHost: x\r\ncontent-length: 2\r\n\r\n{}";
        let (head, off) = parse_head(raw, 10).unwrap().unwrap();
        assert_eq!(head.first[0], "POST");
        assert_eq!(head.first[1], "/v1/networks");
        assert_eq!(head.content_length, 2);
        assert_eq!(&raw[off..], b"{}");
    }

    #[test]
    fn incomplete_and_hostile_heads() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n", 10).unwrap(), None);
        assert_eq!(
            parse_head(&vec![b'a'; MAX_HEAD + 1], 10),
            Err(HttpError::HeadTooLarge)
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 10),
            Err(HttpError::BodyTooLarge(11, 10))
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 10),
            Err(HttpError::Chunked)
        );
        assert!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 10).is_err());
        assert!(parse_head(b"GET / HTTP/1.1\r\nbroken\r\n\r\n", 10).is_err());
    }

    #[test]
    fn response_round_trips() {
        let raw = response(409, b"{\"a\":1}");
        let (head, off) = parse_head(&raw, 100).unwrap().unwrap();
        assert_eq!(head.first[1], "409");
        assert_eq!(&raw[off..], b"{\"a\":1}");
    }
}
