//! Reading distcc requests and replies from tokio streams (writing is `encode` plus `write_all`).
//!
//! A server reads the `DIST` header on its own first ([`read_version`]), so it can answer even a
//! request it refuses in the client's own protocol version.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::tokens::{
    DistccError, HEADER_LEN, Limits, Reply, Request, Version, check, parse_header,
};

async fn header<R: AsyncRead + Unpin>(
    r: &mut R,
    expected: &'static str,
) -> Result<u32, DistccError> {
    let mut buf = [0u8; HEADER_LEN];
    r.read_exact(&mut buf).await?;
    parse_header(&buf, expected)
}

async fn body<R: AsyncRead + Unpin>(
    r: &mut R,
    token: &'static str,
    version: Version,
    limits: &Limits,
) -> Result<Vec<u8>, DistccError> {
    let len = check(token, header(r, token).await?, limits.max_wire_body)?;
    let mut wire = vec![0u8; len];
    r.read_exact(&mut wire).await?;
    version.decode_body(wire, limits.max_raw_body)
}

/// Reads the `DIST` header. `Err(Version(n))` carries an unsupported version.
pub async fn read_version<R: AsyncRead + Unpin>(r: &mut R) -> Result<Version, DistccError> {
    Version::from_number(header(r, "DIST").await?)
}

/// Reads `ARGC` and the `ARGV`s.
pub async fn read_argv<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &Limits,
) -> Result<Vec<String>, DistccError> {
    let argc = check("argument count", header(r, "ARGC").await?, limits.max_args)?;
    let mut argv = Vec::with_capacity(argc);
    for _ in 0..argc {
        let len = check("argument", header(r, "ARGV").await?, limits.max_arg_len)?;
        let mut arg = vec![0u8; len];
        r.read_exact(&mut arg).await?;
        argv.push(String::from_utf8(arg).map_err(|_| DistccError::NotUtf8)?);
    }
    Ok(argv)
}

/// Reads the `DOTI` body, decompressed and capped.
pub async fn read_source<R: AsyncRead + Unpin>(
    r: &mut R,
    version: Version,
    limits: &Limits,
) -> Result<Vec<u8>, DistccError> {
    body(r, "DOTI", version, limits).await
}

/// Reads a whole request after its `DIST` header.
pub async fn read_request_after_version<R: AsyncRead + Unpin>(
    r: &mut R,
    version: Version,
    limits: &Limits,
) -> Result<Request, DistccError> {
    let argv = read_argv(r, limits).await?;
    let source = read_source(r, version, limits).await?;
    Ok(Request { version, argv, source })
}

/// Reads a server's reply.
pub async fn read_reply<R: AsyncRead + Unpin>(
    r: &mut R,
    version: Version,
    limits: &Limits,
) -> Result<Reply, DistccError> {
    let done = header(r, "DONE").await?;
    if done != version.number() {
        return Err(DistccError::Version(done));
    }
    let status = header(r, "STAT").await?;
    let stderr = body(r, "SERR", version, limits).await?;
    let stdout = body(r, "SOUT", version, limits).await?;
    let object = body(r, "DOTO", version, limits).await?;
    Ok(Reply { status, stderr, stdout, object })
}
