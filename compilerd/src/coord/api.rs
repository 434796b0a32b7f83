//! A blocking client of the coordinator's operations API (`discomy_protocol::ops`): JSON over
//! HTTP (ureq), for the `discomy submit`/`discomy jobs` commands and the builder role.
//!
//! A coordinator of a working fleet serves HTTPS only: an `https://` URL needs the farm CA
//! ([`ApiTls`]: a fleet directory's `ca.pem`, or `--ca FILE`) and is never sent unverified;
//! this host's farm certificate (`node.pem`, else `admin.pem`) is shown when it has one, and
//! read again when renewal replaces it.
//!
//! Every call has a timeout; JSON answers are read up to [`MAX_JSON_BYTES`]; files go up and down
//! streamed, hashed with blake3 (uploads hash first, downloads verify digest and size and never
//! take more bytes than announced). A non-2xx answer is [`ApiClientError::Status`] with the
//! server's `error` text.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use discomy_protocol::ops::{
    API_PREFIX, ApiError, BatchRequest, BatchResponse, BlobRef, BuilderAnswer, BuilderReport,
    FinishRequest, JobDetail, JobEvent, JobState, JobView, SubmitRequest, SubmitResponse,
    TokenCreateRequest, TokenCreated, TokenInfo, is_blake3_hex, is_plain_file_name, percent_encode,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api_tls::Agents;
pub use super::api_tls::ApiTls;

/// The most a JSON answer may hold.
pub const MAX_JSON_BYTES: u64 = 64 << 20;
/// The most a build log may hold when fetched whole.
pub const MAX_LOG_BYTES: u64 = 256 << 20;
/// The most of an error body read.
const MAX_ERROR_BYTES: u64 = 64 << 10;
/// Connecting.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A JSON call, start to end.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A transfer gets [`CALL_TIMEOUT`] plus one second per this many bytes.
const TRANSFER_BYTES_PER_SEC: u64 = 1 << 20;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// The base URL is not one this client speaks to.
    #[error("bad coordinator API URL {url:?}: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        why: &'static str,
    },
    /// No answer: connection refused, reset, timed out.
    #[error("{url}: {source}")]
    Transport {
        /// The request.
        url: String,
        /// ureq's error.
        source: Box<ureq::Error>,
    },
    /// The server answered with a non-2xx status.
    #[error("{url}: HTTP {status}: {error}")]
    Status {
        /// The request.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's `error` text (or the start of its body).
        error: String,
    },
    /// The answer was not what the API promises (bad JSON, too large, wrong digest or size).
    #[error("{url}: bad answer: {why}")]
    BadAnswer {
        /// The request.
        url: String,
        /// What was wrong.
        why: String,
    },
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The caller asked for something the API cannot carry (a name that is not plain, a bad
    /// digest).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The farm CA or this host's certificate could not be read.
    #[error("TLS: {0}")]
    Tls(String),
}

impl ApiClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the server refused the request for good (4xx): resending it will not help.
    pub fn is_refusal(&self) -> bool {
        self.status().is_some_and(|s| (400..500).contains(&s))
    }

    /// Whether the server said the thing does not exist (404).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

pub(super) type Result<T> = std::result::Result<T, ApiClientError>;

/// A client of one coordinator's operations API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    agents: Arc<Agents>,
    base: String,
    token: Option<String>,
}

impl ApiClient {
    /// A client of the API at `base_url` (`http://host:port`, no path), sending `token` as
    /// `Authorization: Bearer TOKEN` when given. For `https://`, see [`ApiClient::with_tls`].
    pub fn new(base_url: &str, token: Option<String>) -> Result<ApiClient> {
        ApiClient::with_tls(base_url, token, ApiTls::default())
    }

    /// A client of the API at `base_url` (`http://` or `https://host:port`, no path); an
    /// `https://` URL needs `tls` to trust a CA (the farm's), and is never used unverified.
    pub fn with_tls(base_url: &str, token: Option<String>, tls: ApiTls) -> Result<ApiClient> {
        let bad = |why| ApiClientError::BadUrl { url: base_url.to_owned(), why };
        let (scheme, rest) = match base_url.split_once("://") {
            Some(("http", rest)) => ("http", rest.trim_end_matches('/')),
            Some(("https", rest)) if tls.has_ca() => ("https", rest.trim_end_matches('/')),
            Some(("https", _)) => {
                return Err(bad(
                    "https needs the farm CA to verify the coordinator: give --fleet-dir DIR \
                     (its ca.pem) or --ca FILE (a builder: ca_file, or the daemon's \
                     --fleet-dir); it is never used unverified",
                ));
            }
            _ => return Err(bad("must start with http:// or https://")),
        };
        if rest.is_empty()
            || rest.contains(['/', '?', '#', '@'])
            || rest.contains(char::is_whitespace)
        {
            return Err(bad("must be http(s)://HOST[:PORT] with no path"));
        }
        if token.as_deref().is_some_and(|t| t.is_empty() || t.contains(['\r', '\n'])) {
            return Err(bad("the token is empty or holds a line break"));
        }
        let agents = Arc::new(Agents::new(tls)?);
        Ok(ApiClient { agents, base: format!("{scheme}://{rest}"), token })
    }

    /// As [`ApiClient::with_tls`], the TLS from the command line (`--ca FILE`, else
    /// `--fleet-dir DIR`), read only for an `https://` URL.
    pub fn from_args(
        base_url: &str,
        token: Option<String>,
        ca: Option<&Path>,
        fleet_dir: Option<&Path>,
    ) -> Result<ApiClient> {
        let tls = match base_url.starts_with("https://") {
            true => ApiTls::from_args(ca, fleet_dir)?,
            false => ApiTls::default(),
        };
        ApiClient::with_tls(base_url, token, tls)
    }

    /// The base URL (`http(s)://host:port`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => req.header("Authorization", format!("Bearer {token}")),
            None => req,
        }
    }

    // ---- user endpoints ----

    /// Uploads a file as a blob (`PUT /blobs/HEX`), hashing it first, and returns its reference
    /// (named after the file).
    pub fn put_blob(&self, path: &Path) -> Result<BlobRef> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| is_plain_file_name(n))
            .ok_or_else(|| {
                ApiClientError::Invalid(format!("{}: not a plain file name", path.display()))
            })?;
        let (mut file, blob) = hashed_file(path, name)?;
        let url = self.url(&format!("/blobs/{}", blob.blake3));
        self.send_file(self.agents.get().put(&url), &url, &mut file, path, blob.size)?;
        Ok(blob)
    }

    /// Downloads blob `blob` into `dest` (written beside it, then renamed), verifying its size and
    /// blake3 digest; never reads more than `blob.size` bytes.
    pub fn get_blob(&self, blob: &BlobRef, dest: &Path) -> Result<()> {
        if !is_blake3_hex(&blob.blake3) {
            return Err(ApiClientError::Invalid(format!("bad blake3 {:?}", blob.blake3)));
        }
        let url = self.url(&format!("/blobs/{}", blob.blake3));
        let req = self
            .auth(self.agents.get().get(&url))
            .config()
            .timeout_global(Some(transfer_timeout(blob.size)))
            .build();
        let resp = req.call().map_err(|e| transport(&url, e))?;
        let mut resp = check_status(&url, resp)?;
        let io_err = |source| ApiClientError::Io { path: dest.to_path_buf(), source };
        let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut tmp =
            tempfile::Builder::new().prefix(".download-").tempfile_in(dir).map_err(io_err)?;
        let reader = resp.body_mut().with_config().limit(blob.size.saturating_add(1)).reader();
        let mut hasher = blake3::Hasher::new();
        let mut got = 0u64;
        let mut reader = reader.take(blob.size.saturating_add(1));
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(bad_answer(&url, format!("reading the body: {e}"))),
            };
            got += n as u64;
            if got > blob.size {
                return Err(bad_answer(
                    &url,
                    format!("more than the {} bytes announced", blob.size),
                ));
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(io_err)?;
        }
        if got != blob.size {
            return Err(bad_answer(&url, format!("{got} bytes, {} announced", blob.size)));
        }
        let digest = hasher.finalize().to_hex();
        if digest.as_str() != blob.blake3 {
            return Err(bad_answer(&url, format!("content hashes to {digest}")));
        }
        tmp.as_file().sync_all().map_err(io_err)?;
        tmp.persist(dest).map_err(|e| io_err(e.error))?;
        Ok(())
    }

    /// Submits a job (`POST /jobs`).
    pub fn submit(&self, req: &SubmitRequest) -> Result<SubmitResponse> {
        self.post_json("/jobs", req)
    }

    /// Submits a batch of jobs in one transaction (`POST /batches`).
    pub fn submit_batch(&self, req: &BatchRequest) -> Result<BatchResponse> {
        self.post_json("/batches", req)
    }

    /// Jobs, optionally only those in `state` and of `batch` (`GET /jobs`).
    pub fn list_jobs(&self, state: Option<JobState>, batch: Option<&str>) -> Result<Vec<JobView>> {
        let mut query = Vec::new();
        if let Some(state) = state {
            query.push(format!("state={}", state.as_str()));
        }
        if let Some(batch) = batch {
            query.push(format!("batch={}", percent_encode(batch)));
        }
        let path = if query.is_empty() {
            "/jobs".to_owned()
        } else {
            format!("/jobs?{}", query.join("&"))
        };
        self.get_json(&path)
    }

    /// One job and its history (`GET /jobs/ID`).
    pub fn job(&self, id: u64) -> Result<JobDetail> {
        self.get_json(&format!("/jobs/{id}"))
    }

    /// Cancels a job (`POST /jobs/ID/cancel`).
    pub fn cancel(&self, id: u64) -> Result<JobView> {
        self.post_json(&format!("/jobs/{id}/cancel"), &serde_json::json!({}))
    }

    /// Sends a failed or cancelled job back to the queue (`POST /jobs/ID/retry`).
    pub fn retry(&self, id: u64) -> Result<JobView> {
        self.post_json(&format!("/jobs/{id}/retry"), &serde_json::json!({}))
    }

    /// Gives a waiting job a new priority (`POST /jobs/ID/priority`).
    pub fn set_priority(&self, id: u64, priority: i32) -> Result<JobView> {
        let req = discomy_protocol::ops::PriorityRequest { priority };
        self.post_json(&format!("/jobs/{id}/priority"), &req)
    }

    /// A job's build log, of `attempt` or the current one (`GET /jobs/ID/log`).
    pub fn log(&self, id: u64, attempt: Option<u32>) -> Result<Vec<u8>> {
        let path = match attempt {
            Some(a) => format!("/jobs/{id}/log?attempt={a}"),
            None => format!("/jobs/{id}/log"),
        };
        let url = self.url(&path);
        let req = self
            .auth(self.agents.get().get(&url))
            .config()
            .timeout_global(Some(transfer_timeout(MAX_LOG_BYTES / 4)))
            .build();
        let resp = check_status(&url, req.call().map_err(|e| transport(&url, e))?)?;
        read_capped(&url, resp, MAX_LOG_BYTES)
    }

    /// State changes after event `after` (`GET /events?after=SEQ`).
    pub fn events(&self, after: u64) -> Result<Vec<JobEvent>> {
        self.get_json(&format!("/events?after={after}"))
    }

    // ---- admin endpoints (the farm token, or a tenant token with the admin scope) ----

    /// Creates a tenant token (`POST /tokens`): its text is in this answer only.
    pub fn create_token(&self, req: &TokenCreateRequest) -> Result<TokenCreated> {
        self.post_json("/tokens", req)
    }

    /// Every tenant token, without secrets (`GET /tokens`).
    pub fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        self.get_json("/tokens")
    }

    /// Revokes a tenant token at once (`DELETE /tokens/ID`).
    pub fn revoke_token(&self, id: u64) -> Result<TokenInfo> {
        let url = self.url(&format!("/tokens/{id}"));
        let resp =
            self.auth(self.agents.get().delete(&url)).call().map_err(|e| transport(&url, e))?;
        parse_json(&url, check_status(&url, resp)?)
    }

    // ---- builder endpoints ----

    /// A builder's report and heartbeat (`POST /builders/report`).
    pub fn report(&self, report: &BuilderReport) -> Result<BuilderAnswer> {
        self.post_json("/builders/report", report)
    }

    /// Appends `bytes`, found at byte `offset` of attempt `attempt`'s log
    /// (`POST /jobs/ID/log?attempt=N&offset=O`). Resending is harmless.
    pub fn append_log(&self, id: u64, attempt: u32, offset: u64, bytes: &[u8]) -> Result<()> {
        let url = self.url(&format!("/jobs/{id}/log?attempt={attempt}&offset={offset}"));
        let req = self
            .auth(self.agents.get().post(&url))
            .header("Content-Type", "application/octet-stream")
            .config()
            .timeout_global(Some(transfer_timeout(bytes.len() as u64)))
            .build();
        let resp = req.send(bytes).map_err(|e| transport(&url, e))?;
        check_status(&url, resp).map(drop)
    }

    /// Uploads the file at `path` as artefact `name` of attempt `attempt`
    /// (`PUT /jobs/ID/artifacts?…`), hashing it first. The file is opened without following a
    /// symbolic link and must be a regular file.
    pub fn put_artifact(&self, id: u64, attempt: u32, name: &str, path: &Path) -> Result<BlobRef> {
        if !is_plain_file_name(name) {
            return Err(ApiClientError::Invalid(format!("artefact name {name:?} is not plain")));
        }
        let (mut file, blob) = hashed_file(path, name)?;
        let url = self.url(&format!(
            "/jobs/{id}/artifacts?attempt={attempt}&name={}&blake3={}&size={}",
            percent_encode(name),
            blob.blake3,
            blob.size
        ));
        self.send_file(self.agents.get().put(&url), &url, &mut file, path, blob.size)?;
        Ok(blob)
    }

    /// Says how an attempt ended (`POST /jobs/ID/finish`).
    pub fn finish(&self, id: u64, req: &FinishRequest) -> Result<JobView> {
        self.post_json(&format!("/jobs/{id}/finish"), req)
    }

    // ---- plumbing ----

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(path);
        let resp = self.auth(self.agents.get().get(&url)).call().map_err(|e| transport(&url, e))?;
        parse_json(&url, check_status(&url, resp)?)
    }

    fn post_json<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let url = self.url(path);
        let bytes = serde_json::to_vec(body).map_err(|e| ApiClientError::Invalid(e.to_string()))?;
        let req =
            self.auth(self.agents.get().post(&url)).header("Content-Type", "application/json");
        let resp = req.send(&bytes[..]).map_err(|e| transport(&url, e))?;
        parse_json(&url, check_status(&url, resp)?)
    }

    fn send_file(
        &self,
        req: ureq::RequestBuilder<ureq::typestate::WithBody>,
        url: &str,
        file: &mut File,
        path: &Path,
        size: u64,
    ) -> Result<()> {
        file.rewind().map_err(|source| ApiClientError::Io { path: path.to_path_buf(), source })?;
        let mut reader = file.take(size);
        let req = self
            .auth(req)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", size.to_string())
            .config()
            .timeout_global(Some(transfer_timeout(size)))
            .build();
        let resp =
            req.send(ureq::SendBody::from_reader(&mut reader)).map_err(|e| transport(url, e))?;
        check_status(url, resp).map(drop)
    }
}

/// Opens `path` (not through a symbolic link; a regular file) and hashes it: the open file and its
/// reference under `name`.
fn hashed_file(path: &Path, name: &str) -> Result<(File, BlobRef)> {
    let io_err = |source| ApiClientError::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(io_err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
    }
    let mut hasher = blake3::Hasher::new();
    let size = io::copy(&mut file, &mut hasher).map_err(io_err)?;
    let blob =
        BlobRef { name: name.to_owned(), blake3: hasher.finalize().to_hex().to_string(), size };
    Ok((file, blob))
}

fn transfer_timeout(size: u64) -> Duration {
    CALL_TIMEOUT + Duration::from_secs(size / TRANSFER_BYTES_PER_SEC)
}

fn transport(url: &str, e: ureq::Error) -> ApiClientError {
    ApiClientError::Transport { url: url.to_owned(), source: Box::new(e) }
}

fn bad_answer(url: &str, why: String) -> ApiClientError {
    ApiClientError::BadAnswer { url: url.to_owned(), why }
}

/// The response, when 2xx; its error otherwise.
fn check_status(
    url: &str,
    mut resp: ureq::http::Response<ureq::Body>,
) -> Result<ureq::http::Response<ureq::Body>> {
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let body =
        resp.body_mut().with_config().limit(MAX_ERROR_BYTES).read_to_vec().unwrap_or_default();
    let error = match serde_json::from_slice::<ApiError>(&body) {
        Ok(e) => e.error,
        Err(_) => {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            if text.is_empty() {
                resp.status().canonical_reason().unwrap_or("error").to_owned()
            } else {
                text.chars().take(500).collect()
            }
        }
    };
    Err(ApiClientError::Status { url: url.to_owned(), status, error })
}

fn read_capped(url: &str, mut resp: ureq::http::Response<ureq::Body>, max: u64) -> Result<Vec<u8>> {
    resp.body_mut()
        .with_config()
        .limit(max)
        .read_to_vec()
        .map_err(|e| bad_answer(url, format!("reading the body (at most {max} bytes): {e}")))
}

fn parse_json<T: DeserializeOwned>(url: &str, resp: ureq::http::Response<ureq::Body>) -> Result<T> {
    let body = read_capped(url, resp, MAX_JSON_BYTES)?;
    serde_json::from_slice(&body).map_err(|e| bad_answer(url, format!("JSON: {e}")))
}

/// The build queue's succeeded jobs as history: running-to-succeeded seconds of each.
pub fn queue_history(
    api: &ApiClient,
) -> Result<Vec<discomy_coordinator::plan::estimate::HistoryRecord>> {
    let mut out = Vec::new();
    for job in api.list_jobs(Some(JobState::Succeeded), None)?.into_iter().take(20_000) {
        let detail = api.job(job.id)?;
        let started = detail.events.iter().rev().find(|e| e.to == JobState::Running);
        let done = detail.events.iter().rev().find(|e| e.to == JobState::Succeeded);
        if let (Some(s), Some(d)) = (started, done) {
            out.push(discomy_coordinator::plan::estimate::HistoryRecord {
                name: job.name.clone(),
                wall_s: d.at - s.at,
                serial_s: None,
                artefact_bytes: job.artifacts.iter().map(|a| a.size).sum(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(ApiClient::new("http://127.0.0.1:3635", None).is_ok());
        let c = ApiClient::new("http://127.0.0.1:3635/", Some("t".into())).map(|c| c.url("/jobs"));
        assert_eq!(c.ok().as_deref(), Some("http://127.0.0.1:3635/api/v1/jobs"));
        for bad in ["https://h", "h:1", "http://", "http://h/x", "http://u@h", "ftp://h"] {
            assert!(ApiClient::new(bad, None).is_err(), "{bad}");
        }
        assert!(ApiClient::new("http://h", Some("a\nb".into())).is_err());
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(percent_encode("rocky 9/a&b=c"), "rocky%209%2Fa%26b%3Dc");
        assert_eq!(percent_encode("lua-5.4_x~"), "lua-5.4_x~");
    }
}
