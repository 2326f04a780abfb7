//! berth's own read API, `/berth/v1`: the event log (`GET /berth/v1/events`, JSON pages or, with `follow=true` or
//! `Accept: text/event-stream`, Server-Sent Events), the images report (`GET /berth/v1/images`) and what runs out
//! of date (`GET /berth/v1/images/outdated`). Who may read is decided like `/v2`: the same authenticator (Basic,
//! berth tokens, ServiceAccount tokens, through [`crate::auth::request`]); admins see everything, any other
//! identity the events and images of the repositories the access rules let it pull; with auth off, everyone sees
//! everything. Handlers are thin: the query grammar is [`parse_events_query`], the joins are [`super::report`], and
//! every store call runs on a blocking thread.
//!
//! Must not: write events or content, or decide access itself (the rules do).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::report::{self, TagState};
use super::store::{EventQuery, EventStore, StoreError, StoredEvent};
use super::{Actor, Event, EventAction, EventLog};
use crate::auth::request::{self, Caller};
use crate::auth::{Action, AuthError, Authenticator, Identity};
use crate::cluster::running::{RunningContainer, RunningImages};
use crate::registry::names::RepoName;
use crate::registry::Registry;
use crate::v2::route::Query;

/// Events in a page when the client asks for no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// The most events in one page.
pub const MAX_LIMIT: usize = 1000;
/// Events read from the store at a time while filtering what a non-admin may see.
const SCAN_BATCH: usize = 1000;
/// Batches read for one page at most: a reader who may see little of a long log gets a short page (and a cursor
/// to go on from) rather than a request that scans the whole log.
const MAX_SCANS: usize = 10;
/// A comment line on an idle stream this often, so proxies and clients keep the connection.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Streams one reader (an identity; with auth off, a client address) may have open at once.
pub const STREAMS_PER_READER: usize = 8;
/// Streams berth serves at once.
pub const STREAMS_IN_ALL: usize = 256;
/// Events sent in one chunk of a stream: the stream reads the next only once the client took this one, so a slow
/// reader holds at most a page in berth's buffers.
const STREAM_PAGE: usize = 100;

const EVENT_PARAMETERS: [&str; 9] = [
    "action",
    "repository",
    "actor",
    "namespace",
    "since",
    "until",
    "limit",
    "cursor",
    "follow",
];

/// Why a `/berth/v1` request was refused. Every message names what was wrong with the request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A query parameter the endpoint does not take (400).
    #[error("unknown parameter {name:?} (this endpoint takes: {known})")]
    UnknownParameter { name: String, known: String },
    /// An `action` naming no action (400).
    #[error("unknown action {0:?} (one of: {known})", known = action_names())]
    UnknownAction(String),
    /// `since`/`until` neither an RFC 3339 time nor a duration (400).
    #[error("{name}={value:?} is neither an RFC 3339 time (2026-12-01T10:00:00Z) nor a duration ago (90s, 30m, 1h, 7d)")]
    BadTime { name: &'static str, value: String },
    /// `limit` not a number from 1 to [`MAX_LIMIT`] (400).
    #[error("limit={0:?} is not a number from 1 to {MAX_LIMIT}")]
    BadLimit(String),
    /// A cursor (`cursor`, `Last-Event-ID`) that is not one berth gives (400).
    #[error("cursor {0:?} is not one berth gave (the `next` of a page, or an event's seq)")]
    BadCursor(String),
    /// `follow` neither true nor false (400).
    #[error("follow={0:?} is neither true nor false")]
    BadFollow(String),
    /// The `Authorization` header cannot be read (400).
    #[error("{0}")]
    Malformed(String),
    /// No credentials, or credentials berth does not accept (401 with a challenge).
    #[error("{message}")]
    Unauthorized { message: String, realm: String },
    /// Credentials not checked now (429 with `Retry-After`).
    #[error("{message}")]
    Busy { message: String, retry_after: u32 },
    /// A reader already has [`STREAMS_PER_READER`] streams open (429).
    #[error("{reader} already follows the event log in {limit} streams; close one before opening another")]
    TooManyStreams { reader: String, limit: usize },
    /// berth already serves [`STREAMS_IN_ALL`] streams (429 with `Retry-After`).
    #[error("berth already serves {0} event streams; try again later")]
    StreamsFull(usize),
    /// The event log is off (404).
    #[error("the event log is off (berth runs with --no-event-log)")]
    Off,
    /// The store or the registry failed (500).
    #[error("{0}")]
    Internal(String),
}

fn action_names() -> String {
    EventAction::ALL.map(EventAction::as_str).join(", ")
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized { .. } => "UNAUTHORIZED",
            ApiError::Busy { .. } | ApiError::TooManyStreams { .. } | ApiError::StreamsFull(_) => {
                "TOOMANYREQUESTS"
            }
            ApiError::Off => "NOT_FOUND",
            ApiError::Internal(_) => "INTERNAL",
            _ => "BAD_REQUEST",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Busy { .. } | ApiError::TooManyStreams { .. } | ApiError::StreamsFull(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Off => StatusCode::NOT_FOUND,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized { realm, .. } => {
                response.append_header((
                    header::WWW_AUTHENTICATE,
                    format!(r#"Bearer realm="{realm}",service="berth""#),
                ));
                response.append_header((header::WWW_AUTHENTICATE, r#"Basic realm="berth""#));
            }
            ApiError::Busy { retry_after, .. } => {
                response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            ApiError::StreamsFull(_) => {
                response.insert_header((header::RETRY_AFTER, "10"));
            }
            _ => {}
        }
        response.json(json!({"error": {"code": self.code(), "message": self.to_string()}}))
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::Internal(error.to_string())
    }
}

impl From<crate::registry::error::RegistryError> for ApiError {
    fn from(error: crate::registry::error::RegistryError) -> Self {
        ApiError::Internal(format!("registry: {error}"))
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(error: actix_web::error::BlockingError) -> Self {
        ApiError::Internal(format!("event store task: {error}"))
    }
}

/// Mounts `/berth/v1`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/berth/v1")
            .route("/events", web::get().to(events))
            .route("/images", web::get().to(images))
            .route("/images/outdated", web::get().to(outdated)),
    );
}

/// The open event streams: how many each reader has, and in all. A stream holds a [`StreamSlot`] while it is
/// open; dropping the stream frees it.
#[derive(Debug)]
pub struct StreamLimits {
    per_reader: usize,
    in_all: usize,
    open: std::sync::Mutex<OpenStreams>,
}

#[derive(Debug, Default)]
struct OpenStreams {
    by_reader: HashMap<String, usize>,
    total: usize,
}

impl Default for StreamLimits {
    fn default() -> StreamLimits {
        StreamLimits::new(STREAMS_PER_READER, STREAMS_IN_ALL)
    }
}

impl StreamLimits {
    /// At most `per_reader` streams for one reader and `in_all` in all.
    pub fn new(per_reader: usize, in_all: usize) -> StreamLimits {
        StreamLimits {
            per_reader,
            in_all,
            open: std::sync::Mutex::new(OpenStreams::default()),
        }
    }

    /// A slot for one more stream of `reader`, or why there is none.
    fn open(self: &Arc<Self>, reader: &str) -> Result<StreamSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.in_all {
            return Err(ApiError::StreamsFull(self.in_all));
        }
        let count = open.by_reader.entry(reader.to_owned()).or_default();
        if *count >= self.per_reader {
            return Err(ApiError::TooManyStreams {
                reader: reader.to_owned(),
                limit: self.per_reader,
            });
        }
        *count += 1;
        open.total += 1;
        Ok(StreamSlot {
            limits: self.clone(),
            reader: reader.to_owned(),
        })
    }

    /// Streams open now, in all.
    pub fn open_streams(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One open stream's place in [`StreamLimits`], given back when dropped.
struct StreamSlot {
    limits: Arc<StreamLimits>,
    reader: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_reader.get_mut(&self.reader) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.by_reader.remove(&self.reader);
            }
        }
    }
}

/// A parsed `/berth/v1/events` query.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsRequest {
    pub query: EventQuery,
    pub follow: bool,
}

/// The events query's grammar: `action` (repeatable, or a comma list), `repository` (a prefix), `actor` (a
/// subject, `*` at the end for a prefix), `namespace`, `since`/`until` (RFC 3339, or a duration before `now`),
/// `limit` (1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent), `cursor` (a page's `next`), `follow`.
pub fn parse_events_query(query: &Query, now: SystemTime) -> Result<EventsRequest, ApiError> {
    only(query, &EVENT_PARAMETERS)?;
    let mut actions = Vec::new();
    for name in query.get_all("action").flat_map(|v| v.split(',')) {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        let action =
            EventAction::parse(name).ok_or_else(|| ApiError::UnknownAction(name.into()))?;
        if !actions.contains(&action) {
            actions.push(action);
        }
    }
    let text = |key: &str| query.get(key).filter(|v| !v.is_empty()).map(str::to_owned);
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(value) => value
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::BadLimit(value.into()))?,
    };
    let follow = match query.get("follow") {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => return Err(ApiError::BadFollow(other.into())),
    };
    Ok(EventsRequest {
        query: EventQuery {
            actions,
            repository_prefix: text("repository"),
            actor: text("actor"),
            namespace: text("namespace"),
            since_millis: query
                .get("since")
                .map(|v| time_param("since", v, now))
                .transpose()?,
            until_millis: query
                .get("until")
                .map(|v| time_param("until", v, now))
                .transpose()?,
            after_seq: query.get("cursor").map(parse_cursor).transpose()?,
            before_seq: None,
            limit,
        },
        follow,
    })
}

/// Refuses a query with a parameter not in `known`.
fn only(query: &Query, known: &[&str]) -> Result<(), ApiError> {
    match query.keys().find(|key| !known.contains(key)) {
        Some(name) => Err(ApiError::UnknownParameter {
            name: name.to_owned(),
            known: known.join(", "),
        }),
        None => Ok(()),
    }
}

/// A time parameter: RFC 3339, or a duration before `now` (`1h`), as milliseconds since the epoch.
fn time_param(name: &'static str, value: &str, now: SystemTime) -> Result<i64, ApiError> {
    let bad = || ApiError::BadTime {
        name,
        value: value.to_owned(),
    };
    let at =
        match time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339) {
            Ok(at) => SystemTime::from(at),
            Err(_) => {
                let ago = crate::units::parse_duration(value).map_err(|_| bad())?;
                now.checked_sub(ago).unwrap_or(UNIX_EPOCH)
            }
        };
    Ok(millis(at))
}

fn millis(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// A cursor: the decimal sequence number of the last event of a page.
fn parse_cursor(value: &str) -> Result<u64, ApiError> {
    value
        .trim()
        .parse()
        .map_err(|_| ApiError::BadCursor(value.to_owned()))
}

/// What the caller may see.
enum Visibility {
    /// Everything: an admin, or auth is off.
    All,
    /// The events and images of the repositories the rules let this identity pull.
    Pullable(Caller),
}

/// [`Visibility`] with the decisions it made for one request kept (one decision per repository).
struct Seer {
    visibility: Arc<Visibility>,
    decided: HashMap<String, bool>,
}

impl Seer {
    fn new(visibility: Visibility) -> Seer {
        Seer {
            visibility: Arc::new(visibility),
            decided: HashMap::new(),
        }
    }

    fn sees_repository(&mut self, repository: &str) -> bool {
        match &*self.visibility {
            Visibility::All => true,
            Visibility::Pullable(caller) => {
                if let Some(seen) = self.decided.get(repository) {
                    return *seen;
                }
                let seen = caller.rules_allow(Action::Pull, repository);
                self.decided.insert(repository.to_owned(), seen);
                seen
            }
        }
    }

    /// Whether the caller may see a running container: everyone when it sees everything, a ServiceAccount the
    /// containers of its own namespace (in repositories it may pull), any other identity (users, the node proxy)
    /// none: which pods run where is the cluster's business, not the registry's.
    fn sees_container(&mut self, container: &RunningContainer) -> bool {
        match &*self.visibility {
            Visibility::All => true,
            Visibility::Pullable(caller) => {
                let Identity::ServiceAccount { namespace, .. } = &caller.authenticated.identity
                else {
                    return false;
                };
                *namespace == container.namespace
                    && container
                        .repository
                        .as_deref()
                        .is_some_and(|r| self.sees_repository(r))
            }
        }
    }

    /// Whether the caller may see where an event came from (its `client`: address and user agent): everyone who
    /// sees everything; others only for their own events.
    fn sees_client(&self, event: &Event) -> bool {
        match &*self.visibility {
            Visibility::All => true,
            Visibility::Pullable(caller) => {
                Actor::from(&caller.authenticated.identity).subject() == event.actor.subject()
            }
        }
    }

    /// Events about no repository (admission decisions, a refused login) are for admins.
    fn sees(&mut self, event: &Event) -> bool {
        match (&*self.visibility, &event.target.repository) {
            (Visibility::All, _) => true,
            (Visibility::Pullable(_), Some(repository)) => self.sees_repository(repository),
            (Visibility::Pullable(_), None) => false,
        }
    }
}

/// Who reads, for the stream limits: the identity's subject, or (auth off) the client's address.
fn reader_of(req: &HttpRequest) -> String {
    let identity = req.extensions().get::<Identity>().cloned();
    match identity {
        Some(identity) => Actor::from(&identity).subject(),
        None => match req.peer_addr() {
            Some(peer) => format!("address {}", peer.ip()),
            None => "anonymous".to_owned(),
        },
    }
}

/// Authenticates the request as `/v2` does and says what it may see. Without credentials (or with an anonymous
/// identity) when auth is on: 401.
async fn visibility(req: &HttpRequest, auth: &Authenticator) -> Result<Visibility, ApiError> {
    if !auth.enabled() {
        return Ok(Visibility::All);
    }
    let unauthorized = |message: String| {
        let info = req.connection_info();
        ApiError::Unauthorized {
            message,
            realm: crate::v2::access::realm(info.scheme(), info.host(), "localhost"),
        }
    };
    let authenticated = auth
        .authenticate(&request::presented(req))
        .await
        .map_err(|e| match e {
            AuthError::Busy {
                message,
                retry_after,
            } => ApiError::Busy {
                message,
                retry_after,
            },
            e if e.is_malformed() => ApiError::Malformed(e.to_string()),
            e => unauthorized(e.to_string()),
        })?;
    if !authenticated.identity.is_authenticated() {
        return Err(unauthorized(
            "authentication required to read berth's event log and images".into(),
        ));
    }
    // For the access log.
    req.extensions_mut().insert(authenticated.identity.clone());
    let policy =
        request::policy(req).ok_or_else(|| ApiError::Internal("no policy store mounted".into()))?;
    let caller = Caller {
        authenticated,
        policy,
    };
    Ok(if caller.is_admin() {
        Visibility::All
    } else {
        Visibility::Pullable(caller)
    })
}

/// A page of what a reader may see, and where the scan stopped.
struct Page {
    events: Vec<StoredEvent>,
    /// The last sequence number read, seen or not.
    scanned: Option<u64>,
    /// Whether the store may hold more after `scanned` (the page is full, or the scan's budget ran out).
    more: bool,
}

/// Reads events after `query.after_seq` until `query.limit` visible ones are found, the store has no more, or
/// [`MAX_SCANS`] batches were read.
fn page(store: &dyn EventStore, query: &EventQuery, seer: &mut Seer) -> Result<Page, StoreError> {
    let all = matches!(&*seer.visibility, Visibility::All);
    let mut page = Page {
        events: Vec::new(),
        scanned: query.after_seq,
        more: false,
    };
    for _ in 0..MAX_SCANS {
        let asked = if all {
            query.limit - page.events.len()
        } else {
            SCAN_BATCH
        };
        let (batch, passed) = readable_batch(
            store,
            &EventQuery {
                after_seq: page.scanned,
                limit: asked,
                ..query.clone()
            },
        )?;
        let exhausted = passed.is_none() && batch.len() < asked;
        for stored in batch {
            page.scanned = Some(stored.seq);
            if seer.sees(&stored.event) {
                page.events.push(stored);
                if page.events.len() == query.limit {
                    page.more = true;
                    return Ok(page);
                }
            }
        }
        if let Some(passed) = passed {
            page.scanned = Some(passed);
        }
        if exhausted {
            return Ok(page);
        }
    }
    page.more = true;
    Ok(page)
}

/// Most unreadable events one batch passes over before it gives up with the error.
const MAX_UNREADABLE: usize = 64;

/// One batch of `query`, reading up to the first event that cannot be read back (a row written by a newer berth,
/// say) and returning its number to be passed over: one bad row must not make every page that covers it fail.
fn readable_batch(
    store: &dyn EventStore,
    query: &EventQuery,
) -> Result<(Vec<StoredEvent>, Option<u64>), StoreError> {
    let mut before = query.before_seq;
    for _ in 0..MAX_UNREADABLE {
        match store.query(&EventQuery {
            before_seq: before,
            ..query.clone()
        }) {
            Ok(batch) => return Ok((batch, before.filter(|b| Some(*b) != query.before_seq))),
            Err(StoreError::Unreadable { seq, why }) if before.is_none_or(|b| seq < b) => {
                ::log::warn!("events API: stored event {seq} is unreadable ({why}); passed over");
                before = Some(seq);
            }
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Database(format!(
        "more than {MAX_UNREADABLE} unreadable events in one batch"
    )))
}

/// An event as the API shows it to this caller: its JSON with its `seq` (the cursor after it), without its
/// `client` when the caller may not see it ([`Seer::sees_client`]).
fn item(stored: &StoredEvent, seer: &Seer) -> Value {
    let mut value = serde_json::to_value(&stored.event).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        if !seer.sees_client(&stored.event) {
            map.remove("client");
        }
        map.insert("seq".into(), stored.seq.into());
    }
    value
}

/// `GET /berth/v1/events`.
async fn events(
    req: HttpRequest,
    log: web::Data<EventLog>,
    auth: web::Data<Authenticator>,
    streams: web::Data<StreamLimits>,
) -> Result<HttpResponse, ApiError> {
    let visibility = visibility(&req, &auth).await?;
    let store = log.store().ok_or(ApiError::Off)?;
    let mut parsed = parse_events_query(&Query::parse(req.query_string()), log.now())?;
    // `Last-Event-ID` wins over `cursor`: an EventSource reconnects with the URL it started with (its `cursor`)
    // and the id of the last event it got.
    if let Some(id) = req.headers().get("last-event-id") {
        let id = id
            .to_str()
            .map_err(|_| ApiError::BadCursor("<not text>".into()))?;
        parsed.query.after_seq = Some(parse_cursor(id)?);
    }
    let wants_stream = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let mut seer = Seer::new(visibility);
    if parsed.follow || wants_stream {
        let slot = streams.into_inner().open(&reader_of(&req))?;
        return follow(store, parsed.query, seer, &log, slot).await;
    }
    let query = parsed.query;
    let (page, seer) =
        web::block(move || page(&*store, &query, &mut seer).map(|p| (p, seer))).await??;
    let next = if page.more {
        page.scanned.map(|seq| seq.to_string())
    } else {
        None
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "events": page.events.iter().map(|e| item(e, &seer)).collect::<Vec<_>>(),
            "next": next,
        })))
}

/// What a following stream carries from one chunk to the next.
struct Following {
    store: Arc<dyn EventStore>,
    query: EventQuery,
    seer: Option<Seer>,
    after: u64,
    committed: watch::Receiver<u64>,
    /// Whether to read the store before waiting (at the start, after a commit, after a full page).
    fetch: bool,
    started: bool,
    /// Held while the stream is open.
    _slot: StreamSlot,
}

/// The Server-Sent Events form: the events after the cursor (or from now), then each new one as it is committed;
/// `id:` is the event's seq, so a client reconnecting with `Last-Event-ID` resumes where it was.
async fn follow(
    store: Arc<dyn EventStore>,
    query: EventQuery,
    seer: Seer,
    log: &EventLog,
    slot: StreamSlot,
) -> Result<HttpResponse, ApiError> {
    let committed = log.subscribe().ok_or(ApiError::Off)?;
    let after = match query.after_seq {
        Some(after) => after,
        None => {
            let store = store.clone();
            web::block(move || store.last_seq()).await??
        }
    };
    let state = Following {
        store,
        query: EventQuery {
            limit: STREAM_PAGE,
            ..query
        },
        seer: Some(seer),
        after,
        committed,
        fetch: true,
        started: false,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        let chunk = next_chunk(&mut state).await?;
        Some((Ok::<_, actix_web::Error>(chunk), state))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

/// The stream's next chunk: a page of events, or a heartbeat; `None` ends the stream (the log stopped, or the
/// store failed: the client reconnects with `Last-Event-ID`).
async fn next_chunk(state: &mut Following) -> Option<Bytes> {
    if !state.started {
        state.started = true;
        return Some(Bytes::from_static(
            b"retry: 3000\n: following berth's event log\n\n",
        ));
    }
    loop {
        if state.fetch {
            let store = state.store.clone();
            let query = EventQuery {
                after_seq: Some(state.after),
                ..state.query.clone()
            };
            let mut seer = state.seer.take()?;
            let (result, seer) = web::block(move || (page(&*store, &query, &mut seer), seer))
                .await
                .ok()?;
            let page = match result {
                Ok(page) => page,
                Err(e) => {
                    log::warn!("events stream: {e}");
                    return None;
                }
            };
            if let Some(scanned) = page.scanned {
                state.after = scanned;
            }
            state.fetch = page.more;
            if !page.events.is_empty() {
                let mut text = String::new();
                for stored in &page.events {
                    text.push_str(&format!(
                        "id: {}\ndata: {}\n\n",
                        stored.seq,
                        item(stored, &seer)
                    ));
                }
                state.seer = Some(seer);
                return Some(Bytes::from(text));
            }
            state.seer = Some(seer);
            if page.more {
                // The scan's budget ran out with nothing this reader may see: move the resume point (a client
                // reconnecting starts after what was scanned) and let the runtime serve others before the next
                // batch, rather than scanning the whole log in one go.
                tokio::task::yield_now().await;
                return Some(Bytes::from(format!("id: {}\n\n", state.after)));
            }
            continue;
        }
        tokio::select! {
            changed = state.committed.changed() => {
                changed.ok()?;
                state.fetch = true;
            }
            () = tokio::time::sleep(HEARTBEAT) => {
                // Also a look at the store: events another berth committed to a shared store signal nobody here.
                state.fetch = true;
                return Some(Bytes::from_static(b": heartbeat\n\n"));
            }
        }
    }
}

/// The tags and digests of `repositories` in berth (names berth would not accept have none).
async fn tag_states(
    registry: &Registry,
    repositories: &[String],
) -> Result<Vec<TagState>, ApiError> {
    let mut states = Vec::new();
    for repository in repositories {
        let Ok(name) = RepoName::parse(repository) else {
            continue;
        };
        for (tag, digest) in registry.tag_digests(&name).await? {
            states.push(TagState {
                repository: repository.clone(),
                tag: tag.as_str().to_owned(),
                digest: digest.to_string(),
            });
        }
    }
    Ok(states)
}

/// `GET /berth/v1/images[?repository=prefix]`.
async fn images(
    req: HttpRequest,
    log: web::Data<EventLog>,
    auth: web::Data<Authenticator>,
    registry: web::Data<Registry>,
    running: web::Data<RunningImages>,
) -> Result<HttpResponse, ApiError> {
    let mut seer = Seer::new(visibility(&req, &auth).await?);
    let query = Query::parse(req.query_string());
    only(&query, &["repository"])?;
    let prefix = query.get("repository").unwrap_or("").to_owned();
    let repositories: Vec<String> = registry
        .catalog(None, None)
        .await?
        .items
        .into_iter()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name.starts_with(&prefix) && seer.sees_repository(name))
        .collect();
    let tags = tag_states(&registry, &repositories).await?;
    let now = millis(log.now());
    let (pulls, pushes) = match log.store() {
        Some(store) => {
            web::block(move || -> Result<_, StoreError> {
                let day = now.saturating_sub(86_400_000);
                let week = now.saturating_sub(7 * 86_400_000);
                Ok((
                    store.pull_stats(&repositories, day, week)?,
                    store.last_pushes(&repositories)?,
                ))
            })
            .await??
        }
        None => (Vec::new(), Vec::new()),
    };
    let snapshot = running.snapshot();
    let containers: Vec<_> = snapshot
        .containers
        .iter()
        .filter(|c| seer.sees_container(c))
        .cloned()
        .collect();
    let rows = report::images(&tags, &pulls, &pushes, &containers);
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "images": rows,
            "watchingPods": snapshot.watching,
            "eventLog": log.enabled(),
        })))
}

/// `GET /berth/v1/images/outdated[?repository=prefix]`.
async fn outdated(
    req: HttpRequest,
    log: web::Data<EventLog>,
    auth: web::Data<Authenticator>,
    registry: web::Data<Registry>,
    running: web::Data<RunningImages>,
) -> Result<HttpResponse, ApiError> {
    let mut seer = Seer::new(visibility(&req, &auth).await?);
    let query = Query::parse(req.query_string());
    only(&query, &["repository"])?;
    let prefix = query.get("repository").unwrap_or("");
    let snapshot = running.snapshot();
    let containers: Vec<_> = snapshot
        .containers
        .iter()
        .filter(|c| {
            c.repository
                .as_deref()
                .is_some_and(|r| r.starts_with(prefix))
                && seer.sees_container(c)
        })
        .cloned()
        .collect();
    let repositories: Vec<String> = containers
        .iter()
        .filter_map(|c| c.repository.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let tags = tag_states(&registry, &repositories).await?;
    let pushes = match log.store() {
        Some(store) => web::block(move || store.last_pushes(&repositories)).await??,
        None => Vec::new(),
    };
    let found = report::outdated(&containers, &tags, &pushes);
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "outdated": found,
            "running": containers.len(),
            "watchingPods": snapshot.watching,
        })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_reader_and_in_all_and_freed_when_dropped() {
        let limits = Arc::new(StreamLimits::new(2, 3));
        let a1 = limits.open("user:a").expect("a's first");
        let _a2 = limits.open("user:a").expect("a's second");
        assert_eq!(
            limits.open("user:a").err().map(|e| e.to_string()).as_deref(),
            Some("user:a already follows the event log in 2 streams; close one before opening another")
        );
        let _b1 = limits.open("user:b").expect("b's first");
        let full = limits.open("user:c").err().expect("berth is full");
        assert_eq!(full.status_code(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            full.to_string(),
            "berth already serves 3 event streams; try again later"
        );
        drop(a1);
        assert_eq!(limits.open_streams(), 2);
        let _c1 = limits.open("user:c").expect("a place freed");
    }

    #[test]
    fn the_events_query_grammar() {
        let now = UNIX_EPOCH + Duration::from_secs(1_764_600_000);
        let check = |query: &str, expected: Result<EventsRequest, &str>| {
            let parsed = parse_events_query(&Query::parse(query), now);
            match (parsed, expected) {
                (Ok(parsed), Ok(expected)) => assert_eq!(parsed, expected, "{query}"),
                (Err(e), Err(message)) => assert_eq!(e.to_string(), message, "{query}"),
                (parsed, expected) => panic!("{query}: {parsed:?}, expected {expected:?}"),
            }
        };
        let base = EventQuery {
            limit: DEFAULT_LIMIT,
            ..EventQuery::default()
        };
        let ok = |query: EventQuery, follow: bool| Ok(EventsRequest { query, follow });
        check("", ok(base.clone(), false));
        check(
            "action=push,tag-moved&action=pull&action=push",
            ok(
                EventQuery {
                    actions: vec![EventAction::Push, EventAction::TagMoved, EventAction::Pull],
                    ..base.clone()
                },
                false,
            ),
        );
        check(
            "repository=team-a/&actor=serviceaccount:team-a/*&namespace=team-a&limit=1000&cursor=42&follow=true",
            ok(
                EventQuery {
                    repository_prefix: Some("team-a/".into()),
                    actor: Some("serviceaccount:team-a/*".into()),
                    namespace: Some("team-a".into()),
                    limit: 1000,
                    after_seq: Some(42),
                    ..base.clone()
                },
                true,
            ),
        );
        check(
            "since=1h&until=2025-12-01T14:40:00Z",
            ok(
                EventQuery {
                    since_millis: Some(1_764_596_400_000),
                    until_millis: Some(1_764_600_000_000),
                    ..base.clone()
                },
                false,
            ),
        );
        check(
            "action=pul",
            Err("unknown action \"pul\" (one of: push, pull, delete, tag-moved, mount, upload-rejected, auth-failed, proxy-fetch, admitted, denied, warned, mutated)"),
        );
        check(
            "since=yesterday",
            Err("since=\"yesterday\" is neither an RFC 3339 time (2026-12-01T10:00:00Z) nor a duration ago (90s, 30m, 1h, 7d)"),
        );
        check("limit=0", Err("limit=\"0\" is not a number from 1 to 1000"));
        check(
            "limit=1001",
            Err("limit=\"1001\" is not a number from 1 to 1000"),
        );
        check(
            "limit=-1",
            Err("limit=\"-1\" is not a number from 1 to 1000"),
        );
        check(
            "cursor=abc",
            Err("cursor \"abc\" is not one berth gave (the `next` of a page, or an event's seq)"),
        );
        check(
            "follow=maybe",
            Err("follow=\"maybe\" is neither true nor false"),
        );
        check(
            "repo=x",
            Err("unknown parameter \"repo\" (this endpoint takes: action, repository, actor, namespace, since, until, limit, cursor, follow)"),
        );
        check(
            "since=99999999999999999d",
            Err("since=\"99999999999999999d\" is neither an RFC 3339 time (2026-12-01T10:00:00Z) nor a duration ago (90s, 30m, 1h, 7d)"),
        );
    }
}
