//! `berth events` and `berth images [--outdated]`: the command-line readers of `/berth/v1` ([`super::routes`]).
//! They authenticate as a registry client does (a berth token or a ServiceAccount token as Bearer, or a user and
//! password as Basic), trust berth's CA (`--ca-file`, or `<cert-dir>/ca.crt` when it exists), page through the
//! events by their `next` cursor, follow the Server-Sent Events stream, and print a table or one JSON object per
//! line.
//!
//! Must not: read the store or the data directory (everything comes over the API), or print secrets.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use super::report::short;
use super::Event;

/// The most bytes of one Server-Sent Event the reader buffers: a longer one is an error, not an ever-growing buffer.
pub const MAX_SSE_EVENT: usize = 1024 * 1024;
/// The most bytes of a JSON answer read (a page of 1000 events is far smaller).
pub const MAX_JSON_BODY: usize = 64 * 1024 * 1024;
/// The most bytes of an error answer read for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Where berth is and how to prove who is asking.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// berth's URL.
    #[arg(
        long,
        value_name = "URL",
        default_value = "https://127.0.0.1:8443",
        env = "BERTH_SERVER"
    )]
    pub server: String,
    /// A Bearer token: a berth token or a Kubernetes ServiceAccount token.
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true, conflicts_with_all = ["token_file", "username"])]
    pub token: Option<String>,
    /// A file holding the Bearer token (a projected ServiceAccount token, say).
    #[arg(long, value_name = "FILE", conflicts_with = "username")]
    pub token_file: Option<PathBuf>,
    /// An htpasswd user (Basic authentication, with --password-file).
    #[arg(long, requires = "password_file")]
    pub username: Option<String>,
    /// A file holding the user's password.
    #[arg(long, value_name = "FILE", requires = "username")]
    pub password_file: Option<PathBuf>,
    /// The CA that signed berth's certificate [default: <cert-dir>/ca.crt when it exists].
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca_file: Option<PathBuf>,
    /// berth's certificate directory, where the default CA is looked for.
    #[arg(long, value_name = "DIR", default_value = "./certs")]
    pub cert_dir: PathBuf,
    /// Do not verify berth's certificate.
    #[arg(long)]
    pub insecure: bool,
}

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line, as the API gives it.
    Json,
}

/// `berth events`.
#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Only these actions (repeatable, or a comma list: push,pull,tag-moved,denied…).
    #[arg(long = "action", value_name = "ACTION")]
    pub actions: Vec<String>,
    /// Only repositories starting with this.
    #[arg(long)]
    pub repository: Option<String>,
    /// Only this actor (`user:alice`, `serviceaccount:team-a/ci`; `*` at the end for a prefix).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only events about this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// From this time on: RFC 3339, or a duration ago (1h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time: RFC 3339, or a duration ago.
    #[arg(long)]
    pub until: Option<String>,
    /// After the events so far, keep printing new ones as berth records them.
    #[arg(long)]
    pub follow: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
    /// Print at most this many events.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

/// `berth images`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Only repositories starting with this.
    #[arg(long)]
    pub repository: Option<String>,
    /// The running containers whose image is out of date, and why.
    #[arg(long)]
    pub outdated: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A credentials or CA file could not be read.
    #[error("reading {path}: {error}")]
    Read { path: String, error: std::io::Error },
    /// The CA file holds no usable certificate, or the HTTP client could not be built.
    #[error("{0}")]
    Setup(String),
    /// berth could not be reached, or the connection broke.
    #[error("{server}: {error}")]
    Http { server: String, error: String },
    /// berth refused the request.
    #[error("{server} answered {status}: {message}")]
    Refused {
        server: String,
        status: u16,
        message: String,
    },
    /// berth's answer was not what the API gives.
    #[error("{server}: unexpected answer: {why}")]
    Unexpected { server: String, why: String },
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// An HTTP client for berth and the `Authorization` header to send.
struct Client {
    http: reqwest::Client,
    server: String,
    authorization: Option<String>,
}

fn read_file(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path).map_err(|error| ClientError::Read {
        path: path.display().to_string(),
        error,
    })
}

impl Client {
    fn new(args: &ConnectionArgs) -> Result<Client, ClientError> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .use_rustls_tls();
        if args.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        } else {
            let default_ca = args.cert_dir.join(crate::tls::CA_CERT);
            let ca = match &args.ca_file {
                Some(path) => Some(path.clone()),
                None => default_ca.exists().then_some(default_ca),
            };
            if let Some(path) = ca {
                let pem = read_file(&path)?;
                let certificate = reqwest::Certificate::from_pem(pem.as_bytes())
                    .map_err(|e| ClientError::Setup(format!("{}: {e}", path.display())))?;
                builder = builder.add_root_certificate(certificate);
            }
        }
        let authorization = match (&args.token, &args.token_file, &args.username) {
            (Some(token), _, _) => Some(format!("Bearer {}", token.trim())),
            (None, Some(path), _) => Some(format!("Bearer {}", read_file(path)?.trim())),
            (None, None, Some(user)) => {
                use base64::Engine as _;
                let password = match &args.password_file {
                    Some(path) => read_file(path)?,
                    None => String::new(),
                };
                let pair = format!("{user}:{}", password.trim_end_matches(['\r', '\n']));
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (None, None, None) => None,
        };
        Ok(Client {
            http: builder
                .build()
                .map_err(|e| ClientError::Setup(e.to_string()))?,
            server: args.server.trim_end_matches('/').to_owned(),
            authorization,
        })
    }

    fn http_error(&self, error: impl std::fmt::Display) -> ClientError {
        ClientError::Http {
            server: self.server.clone(),
            error: error.to_string(),
        }
    }

    /// `GET path` with `query`; the answer when it is 200, else berth's message.
    async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut request = self.http.get(format!("{}{path}", self.server)).query(query);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.http_error(error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = match read_capped(response, MAX_ERROR_BODY).await {
            Ok(body) | Err(ReadError::TooLarge(body)) => body,
            Err(ReadError::Http(_)) => Vec::new(),
        };
        let text = String::from_utf8_lossy(&body).into_owned();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        Err(ClientError::Refused {
            server: self.server.clone(),
            status: status.as_u16(),
            message: printable(&message),
        })
    }

    async fn get_json(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ClientError> {
        let response = self
            .get(path, query, Some(Duration::from_secs(120)))
            .await?;
        let body = read_capped(response, MAX_JSON_BODY)
            .await
            .map_err(|e| match e {
                ReadError::Http(e) => self.http_error(error_chain(&e)),
                ReadError::TooLarge(_) => {
                    self.unexpected(format!("an answer of more than {MAX_JSON_BODY} bytes"))
                }
            })?;
        serde_json::from_slice(&body).map_err(|e| self.unexpected(e))
    }

    fn unexpected(&self, why: impl std::fmt::Display) -> ClientError {
        ClientError::Unexpected {
            server: self.server.clone(),
            why: why.to_string(),
        }
    }
}

/// Why [`read_capped`] stopped.
enum ReadError {
    Http(reqwest::Error),
    /// The body is longer than the cap; what was read (the cap's worth).
    TooLarge(Vec<u8>),
}

/// Reads a body up to `cap` bytes.
async fn read_capped(response: reqwest::Response, cap: usize) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ReadError::Http)?;
        if body.len().saturating_add(chunk.len()) > cap {
            let room = cap - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Err(ReadError::TooLarge(body));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `text` safe to print on a terminal: control characters (ESC, CR, BEL, …, and newlines) shown as `\u{1b}`.
pub fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            shown.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            shown.push(c);
        }
    }
    shown
}

/// An error with its sources (reqwest's own message says little: "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Setup(format!("starting the runtime: {e}")))
}

/// Runs `berth events`, printing to `out` as pages arrive.
pub fn events(args: &EventsArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    runtime()?.block_on(events_async(args, out))
}

async fn events_async(args: &EventsArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let client = Client::new(&args.connection)?;
    let mut query: Vec<(&str, String)> = Vec::new();
    if !args.actions.is_empty() {
        query.push(("action", args.actions.join(",")));
    }
    for (key, value) in [
        ("repository", &args.repository),
        ("actor", &args.actor),
        ("namespace", &args.namespace),
        ("since", &args.since),
        ("until", &args.until),
    ] {
        if let Some(value) = value {
            query.push((key, value.clone()));
        }
    }
    let mut left = args.limit.unwrap_or(usize::MAX);
    // The header once the first answer came (an error is then alone on the screen).
    let mut header = args.output == Output::Table;
    let mut cursor: Option<String> = None;
    while left > 0 {
        let mut page_query = query.clone();
        page_query.push(("limit", left.min(super::routes::MAX_LIMIT).to_string()));
        if let Some(cursor) = &cursor {
            page_query.push(("cursor", cursor.clone()));
        }
        let page = client.get_json("/berth/v1/events", &page_query).await?;
        if std::mem::take(&mut header) {
            writeln!(out, "{}", event_row(None))?;
        }
        let events = page["events"]
            .as_array()
            .ok_or_else(|| client.unexpected("no events list"))?;
        for item in events.iter().take(left) {
            print_event(item, args.output, out)?;
            left -= 1;
            cursor = item["seq"].as_u64().map(|seq| seq.to_string()).or(cursor);
        }
        out.flush()?;
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    if !args.follow || left == 0 {
        return Ok(());
    }
    // Follow from the last event printed, or from now when there was none.
    let mut follow_query = query.clone();
    follow_query.push(("follow", "true".into()));
    if let Some(cursor) = &cursor {
        follow_query.push(("cursor", cursor.clone()));
    }
    let response = client.get("/berth/v1/events", &follow_query, None).await?;
    let mut body = response.bytes_stream();
    let mut buffer = SseBuffer::default();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| client.http_error(error_chain(&e)))?;
        for data in buffer.push(&chunk).map_err(|e| client.unexpected(e))? {
            let item: Value = serde_json::from_str(&data).map_err(|e| client.unexpected(e))?;
            print_event(&item, args.output, out)?;
            left -= 1;
            if left == 0 {
                return Ok(());
            }
        }
        out.flush()?;
    }
    Err(client.http_error("the event stream ended"))
}

/// What the stream sent that is not a whole message yet. Each message's end is looked for only in the bytes that
/// came since the last look, and a message longer than [`MAX_SSE_EVENT`] is an error.
#[derive(Debug, Default)]
struct SseBuffer {
    bytes: Vec<u8>,
    /// How far `bytes` is known to hold no message end.
    scanned: usize,
}

impl SseBuffer {
    /// Adds `chunk` and takes the complete messages off the front; returns their `data` (comments, `id:` and
    /// `retry:` lines are skipped; multi-line data is joined with newlines, as the SSE spec says).
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, String> {
        self.bytes.extend_from_slice(chunk);
        let mut found = Vec::new();
        loop {
            // A `\n\n` may straddle the old bytes and the new: look from one byte before.
            let from = self.scanned.saturating_sub(1);
            let Some(at) = self.bytes[from..].windows(2).position(|w| w == b"\n\n") else {
                self.scanned = self.bytes.len();
                break;
            };
            let end = from + at + 2;
            let message: Vec<u8> = self.bytes.drain(..end).collect();
            self.scanned = 0;
            if message.len() > MAX_SSE_EVENT {
                return Err(format!("an event of more than {MAX_SSE_EVENT} bytes"));
            }
            let text = String::from_utf8_lossy(&message);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                found.push(data.join("\n"));
            }
        }
        if self.bytes.len() > MAX_SSE_EVENT {
            return Err(format!("an event of more than {MAX_SSE_EVENT} bytes"));
        }
        Ok(found)
    }
}

fn print_event(item: &Value, output: Output, out: &mut dyn Write) -> Result<(), ClientError> {
    match output {
        Output::Json => writeln!(out, "{item}")?,
        Output::Table => {
            let event: Option<Event> = serde_json::from_value(item.clone()).ok();
            match event {
                Some(event) => writeln!(out, "{}", event_row(Some(&event)))?,
                None => writeln!(out, "{item}")?,
            }
        }
    }
    Ok(())
}

/// One line of the events table (the header without an event): fixed columns, so a followed stream lines up.
pub fn event_row(event: Option<&Event>) -> String {
    let Some(event) = event else {
        return format!(
            "{:<20}  {:<15}  {:<30}  {:<50}  RESULT",
            "TIME", "ACTION", "ACTOR", "TARGET"
        );
    };
    let time = event
        .time
        .replace_millisecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let result = match &event.result.code {
        Some(code) => format!("{} {code}", event.result.status),
        None => event.result.status.to_string(),
    };
    format!(
        "{time:<20}  {:<15}  {:<30}  {:<50}  {}",
        event.action.as_str(),
        printable(&event.actor.subject()),
        printable(&target(event)),
        printable(&result)
    )
}

/// What an event was on, compactly: `team-a/app:v1@sha256:0123456789ab`, `team-a/Pod/web-1`.
fn target(event: &Event) -> String {
    if let Some(admission) = &event.admission {
        return format!(
            "{}/{}/{}",
            admission.namespace, admission.kind, admission.name
        );
    }
    let target = &event.target;
    let mut text = target.repository.clone().unwrap_or_default();
    if let Some(tag) = &target.tag {
        text.push(':');
        text.push_str(tag);
    }
    if let Some(digest) = &target.digest {
        text.push('@');
        text.push_str(&short(digest));
    }
    if text.is_empty() {
        text = target.scope.clone().unwrap_or_else(|| "-".into());
    }
    text
}

/// Runs `berth images [--outdated]`.
pub fn images(args: &ImagesArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    runtime()?.block_on(images_async(args, out))
}

async fn images_async(args: &ImagesArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let client = Client::new(&args.connection)?;
    let mut query = Vec::new();
    if let Some(repository) = &args.repository {
        query.push(("repository", repository.clone()));
    }
    let path = if args.outdated {
        "/berth/v1/images/outdated"
    } else {
        "/berth/v1/images"
    };
    let answer = client.get_json(path, &query).await?;
    let key = if args.outdated { "outdated" } else { "images" };
    let items = answer[key]
        .as_array()
        .ok_or_else(|| client.unexpected(format!("no {key} list")))?;
    if args.output == Output::Json {
        for item in items {
            writeln!(out, "{item}")?;
        }
        return Ok(());
    }
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let watching = answer["watchingPods"] != Value::Bool(false);
    if items.is_empty() {
        let what = match (args.outdated, watching) {
            (false, _) => "no images".to_owned(),
            (true, true) => nothing_outdated(&answer["running"]),
            (true, false) => String::new(),
        };
        if !what.is_empty() {
            writeln!(out, "{what}")?;
        }
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    if args.outdated {
        rows.push(
            [
                "NAMESPACE/POD",
                "CONTAINER",
                "NODE",
                "IMAGE",
                "RUNNING",
                "WHY",
            ]
            .map(str::to_owned)
            .to_vec(),
        );
        for item in items {
            let reasons: Vec<String> = item["reasons"]
                .as_array()
                .map(|r| r.iter().map(|r| text(&r["message"])).collect())
                .unwrap_or_default();
            rows.push(vec![
                format!("{}/{}", text(&item["namespace"]), text(&item["pod"])),
                text(&item["container"]),
                text(&item["node"]),
                text(&item["image"]),
                short(&text(&item["digest"])),
                reasons.join("; "),
            ]);
        }
    } else {
        rows.push(
            [
                "IMAGE",
                "DIGEST",
                "PUSHED",
                "BY",
                "PULLS",
                "24H",
                "7D",
                "LAST PULLED",
                "BY",
                "PULLERS",
                "NODES",
                "PODS",
            ]
            .map(str::to_owned)
            .to_vec(),
        );
        for item in items {
            let when = |v: &Value| {
                v["time"]
                    .as_str()
                    .map_or_else(|| "-".to_owned(), str::to_owned)
            };
            let list = |v: &Value| {
                let names: Vec<String> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|n| n.as_str().unwrap_or("-").to_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                if names.is_empty() {
                    "-".to_owned()
                } else {
                    names.join(",")
                }
            };
            let pods: Vec<Value> = item["running"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| format!("{}/{}", text(&p["namespace"]), text(&p["pod"])).into())
                        .collect()
                })
                .unwrap_or_default();
            rows.push(vec![
                format!("{}:{}", text(&item["repository"]), text(&item["tag"])),
                short(&text(&item["digest"])),
                when(&item["pushed"]),
                text(&item["pushed"]["by"]),
                item["pulls"]["total"].to_string(),
                item["pulls"]["lastDay"].to_string(),
                item["pulls"]["lastWeek"].to_string(),
                when(&item["lastPulled"]),
                text(&item["lastPulled"]["by"]),
                item["pullers"].to_string(),
                list(&item["nodes"]),
                list(&Value::Array(pods)),
            ]);
        }
    }
    if rows.len() > 1 {
        out.write_all(align(&rows).as_bytes())?;
    }
    if !watching {
        writeln!(
            out,
            "(berth is not watching pods — it runs outside a cluster — so nothing is known to run)"
        )?;
    }
    Ok(())
}

/// The table's line when nothing is out of date, saying how many containers were checked (`running`, the
/// answer's count; left out when it is not a number).
fn nothing_outdated(running: &Value) -> String {
    let checked = match running.as_u64() {
        Some(0) => " (no container runs one of berth's images)".to_owned(),
        Some(1) => " (1 container of berth's images checked)".to_owned(),
        Some(n) => format!(" ({n} containers of berth's images checked)"),
        None => String::new(),
    };
    format!("nothing that runs is out of date{checked}")
}

/// Rows as columns padded to their widest cell, two spaces apart.
fn align(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| printable(cell)).collect())
        .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_messages_are_taken_whole_and_only_their_data_kept() {
        let check = |chunks: &[&str], expected: &[&[&str]]| {
            let mut buffer = SseBuffer::default();
            for (chunk, expected) in chunks.iter().zip(expected) {
                let found = buffer.push(chunk.as_bytes()).expect("small events");
                assert_eq!(found, *expected, "{chunks:?}");
            }
        };
        check(
            &[
                "retry: 3000\n: following\n\n",
                "id: 1\ndata: {\"a\":1}\n\nid: 2\nda",
                "ta: {}\n\n",
            ],
            &[&[], &["{\"a\":1}"], &["{}"]],
        );
        check(&[": heartbeat\n\n"], &[&[]]);
        check(&["data:x\ndata: y\n\n"], &[&["x\ny"]]);
        check(&["id: 3\ndata: {}\n"], &[&[]]);
        // The end of a message split across chunks.
        check(&["data: a\n", "\ndata: b\n", "\n"], &[&[], &["a"], &["b"]]);
    }

    #[test]
    fn an_sse_event_beyond_the_cap_is_an_error_and_only_new_bytes_are_scanned() {
        let mut buffer = SseBuffer::default();
        let piece = vec![b'x'; 64 * 1024];
        for _ in 0..MAX_SSE_EVENT / piece.len() {
            assert_eq!(buffer.push(&piece), Ok(vec![]));
        }
        assert_eq!(buffer.scanned, MAX_SSE_EVENT);
        assert_eq!(
            buffer.push(b"x"),
            Err(format!("an event of more than {MAX_SSE_EVENT} bytes"))
        );
        let mut whole = SseBuffer::default();
        let mut big = b"data: ".to_vec();
        big.extend(vec![b'y'; MAX_SSE_EVENT]);
        big.extend_from_slice(b"\n\n");
        assert!(whole.push(&big).is_err());
    }

    #[test]
    fn control_characters_are_shown_not_sent_to_the_terminal() {
        let check = |text: &str, expected: &str| assert_eq!(printable(text), expected, "{text:?}");
        check("team-a/app", "team-a/app");
        check("\u{1b}[2Jgone", "\\u{1b}[2Jgone");
        check("a\rb\nc\u{7}", "a\\u{d}b\\u{a}c\\u{7}");
        check("\u{9b}31m", "\\u{9b}31m");
        check("naïve", "naïve");
        let mut event = event_with(super::super::model::Target {
            repository: Some("evil\u{1b}]0;title\u{7}".into()),
            ..Default::default()
        });
        event.actor = super::super::Actor::from(&crate::auth::Identity::User {
            name: "\rroot".into(),
        });
        let row = event_row(Some(&event));
        assert!(!row.chars().any(char::is_control), "{row:?}");
        assert!(row.contains("user:\\u{d}root"), "{row}");
        let table = align(&[vec!["a\u{1b}".into(), "b".into()]]);
        assert_eq!(table, "a\\u{1b}  b\n");
    }

    #[test]
    fn nothing_out_of_date_says_how_many_containers_were_checked() {
        let check = |running: Value, expected: &str| {
            assert_eq!(nothing_outdated(&running), expected, "{running}");
        };
        check(
            Value::from(0),
            "nothing that runs is out of date (no container runs one of berth's images)",
        );
        check(
            Value::from(1),
            "nothing that runs is out of date (1 container of berth's images checked)",
        );
        check(
            Value::from(3),
            "nothing that runs is out of date (3 containers of berth's images checked)",
        );
        check(Value::Null, "nothing that runs is out of date");
        check(Value::from(-1), "nothing that runs is out of date");
    }

    fn event_with(target: super::super::model::Target) -> Event {
        let mut event = Event::new(
            super::super::EventAction::Pull,
            super::super::Actor::anonymous(),
            "t",
            std::time::UNIX_EPOCH + Duration::from_millis(1_764_600_000_123),
        );
        event.target = target;
        event
    }

    #[test]
    fn the_table_names_targets_compactly() {
        use super::super::model::Target;
        let check = |target: Target, expected: &str| {
            assert_eq!(super::target(&event_with(target)), expected);
        };
        let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        check(
            Target {
                repository: Some("team-a/app".into()),
                tag: Some("v1".into()),
                digest: Some(digest.into()),
                ..Target::default()
            },
            "team-a/app:v1@sha256:0123456789ab",
        );
        check(
            Target {
                repository: Some("team-a/app".into()),
                ..Target::default()
            },
            "team-a/app",
        );
        check(
            Target {
                scope: Some("registry:catalog:*".into()),
                ..Target::default()
            },
            "registry:catalog:*",
        );
        check(Target::default(), "-");
        let row = event_row(Some(&event_with(Target::default())));
        assert!(row.starts_with("2025-12-01T14:40:00Z  pull "), "{row}");
        assert!(row.ends_with("  200"), "{row}");
    }
}
