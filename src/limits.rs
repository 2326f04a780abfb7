//! Bounds on what one client can make berth hold: how long a request body may pause, how long a buffered body
//! (a manifest, an AdmissionReview) may take in all, and how many bytes of buffered bodies all clients together
//! may have in memory.
//!
//! [`limit_bodies`] is a middleware that wraps every request body in a [`LimitedBody`]: a stream that fails with a
//! [`BodyLimitError`] when the client pauses longer than the idle timeout, and, for the endpoints that buffer the
//! whole body, when the body takes longer than the body timeout or the shared [`ByteBudget`] is spent. Handlers that
//! buffer read with [`read_to_limit`], which also enforces their per-endpoint size limit. Streamed bodies (blob
//! uploads) are only bounded in time between chunks: their bytes go to disk as they arrive.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

/// actix's boxed payload stream.
type BoxedBody = Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>;

/// Why a request body was cut off by berth (not by the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyLimitError {
    /// The client sent nothing for `0` while berth was waiting for the body.
    #[error("the client sent no request body data for {0:?}")]
    Idle(Duration),
    /// A buffered body did not arrive completely within `0`.
    #[error("the request body did not arrive completely within {0:?}")]
    Deadline(Duration),
    /// The memory for buffered request bodies (`limit` bytes, shared by all clients) is in use.
    #[error("the server is buffering {limit} bytes of request bodies already; retry later")]
    Busy { limit: usize },
}

/// The [`BodyLimitError`] inside a payload error, if berth's limits caused it.
pub fn limit_error(error: &PayloadError) -> Option<&BodyLimitError> {
    match error {
        PayloadError::Io(io) => io.get_ref()?.downcast_ref::<BodyLimitError>(),
        _ => None,
    }
}

fn payload_error(error: BodyLimitError) -> PayloadError {
    let kind = match error {
        BodyLimitError::Busy { .. } => std::io::ErrorKind::OutOfMemory,
        _ => std::io::ErrorKind::TimedOut,
    };
    PayloadError::Io(std::io::Error::new(kind, error))
}

/// A number of bytes shared by all buffered request bodies. Taking from it never waits: past the limit, the request
/// fails at once (the caller answers 429 and the client retries later), so a flood of slow bodies cannot make
/// other requests queue behind it.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(ByteBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// What one request has taken from a budget; given back when the last holder (the body stream or the middleware,
/// which keeps it until the response is produced) drops it.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ByteBudget>,
    bytes: AtomicUsize,
}

impl Reservation {
    pub fn new(budget: Arc<ByteBudget>) -> Arc<Self> {
        Arc::new(Reservation {
            budget,
            bytes: AtomicUsize::new(0),
        })
    }

    /// Takes `bytes` more, or fails when the budget cannot give them.
    fn grow(&self, bytes: usize) -> Result<(), BodyLimitError> {
        if self.budget.take(bytes) {
            self.bytes.fetch_add(bytes, Ordering::AcqRel);
            Ok(())
        } else {
            Err(BodyLimitError::Busy {
                limit: self.budget.limit,
            })
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(*self.bytes.get_mut());
    }
}

/// The body limits in force, shared by all workers (`web::Data`).
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Longest wait for the next piece of any request body.
    pub idle_timeout: Duration,
    /// Longest time a buffered body (manifest, AdmissionReview) may take from the start of the request.
    pub buffered_timeout: Duration,
    /// Memory for buffered manifest bodies.
    pub manifests: Arc<ByteBudget>,
    /// Memory for buffered AdmissionReviews: separate, so that a flood of manifest bodies never refuses a review.
    pub reviews: Arc<ByteBudget>,
}

impl BodyLimits {
    /// `memory` is split evenly between manifests and admission reviews.
    pub fn new(idle_timeout: Duration, buffered_timeout: Duration, memory: usize) -> Self {
        BodyLimits {
            idle_timeout,
            buffered_timeout,
            manifests: ByteBudget::new(memory / 2),
            reviews: ByteBudget::new(memory - memory / 2),
        }
    }

    /// The budget of the endpoints that buffer the whole body; `None` for streamed or bodiless ones.
    fn budget_for(&self, method: &Method, path: &str) -> Option<&Arc<ByteBudget>> {
        if method == Method::POST && (path == "/validate" || path == "/mutate") {
            return Some(&self.reviews);
        }
        if method == Method::PUT && path.starts_with("/v2/") {
            let mut segments = path.rsplit('/');
            let _reference = segments.next();
            if segments.next() == Some("manifests") {
                return Some(&self.manifests);
            }
        }
        None
    }
}

/// A request body that fails when the client stalls, and optionally when it is late in all or the budget is spent.
pub struct LimitedBody {
    inner: Payload,
    idle: Duration,
    /// Armed when the consumer asks for data and none is ready; reset after each chunk. Made on first use, so a
    /// request whose body is never read (a GET) costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// For buffered bodies: when the whole body must have arrived, and the reservation each chunk grows.
    deadline: Option<(Instant, Duration)>,
    reservation: Option<Arc<Reservation>>,
    /// Bytes of the body so far.
    received: usize,
    failed: bool,
}

/// The start of every buffered body that is not charged to the shared budget (see [`LimitedBody`]).
pub const UNBUDGETED_BYTES: usize = 64 * 1024;

impl LimitedBody {
    pub fn new(
        inner: Payload,
        idle: Duration,
        deadline: Option<(Instant, Duration)>,
        reservation: Option<Arc<Reservation>>,
    ) -> Self {
        LimitedBody {
            inner,
            idle,
            timer: None,
            armed: false,
            deadline,
            reservation,
            received: 0,
            failed: false,
        }
    }

    fn fail(&mut self, error: BodyLimitError) -> Poll<Option<Result<Bytes, PayloadError>>> {
        self.failed = true;
        Poll::Ready(Some(Err(payload_error(error))))
    }
}

impl Stream for LimitedBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.armed = false;
                let before = this.received;
                this.received = this.received.saturating_add(chunk.len());
                // The first UNBUDGETED_BYTES of a body are not taken from the budget: so many bytes cost no more
                // than the connection's own read buffer, and a flood of large bodies can then never refuse the
                // small ones (an ordinary review or manifest), only other large ones.
                let charged = this.received.saturating_sub(before.max(UNBUDGETED_BYTES));
                if let Some(reservation) = this.reservation.as_ref().filter(|_| charged > 0) {
                    if let Err(error) = reservation.grow(charged) {
                        return this.fail(error);
                    }
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => {
                let now = Instant::now();
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::ZERO)));
                if !this.armed {
                    this.armed = true;
                    let mut due = now + this.idle;
                    if let Some((deadline, _)) = this.deadline {
                        due = due.min(deadline);
                    }
                    timer.as_mut().reset(due);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                match this.deadline {
                    Some((deadline, total)) if now >= deadline => {
                        this.fail(BodyLimitError::Deadline(total))
                    }
                    _ => {
                        let idle = this.idle;
                        this.fail(BodyLimitError::Idle(idle))
                    }
                }
            }
        }
    }
}

/// Middleware: wraps every request body in a [`LimitedBody`] with the limits of its endpoint. The reservation of a
/// buffered body is held until the handler has answered, since the buffered bytes live as long as the handler.
pub async fn limit_bodies(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(limits) = req.app_data::<web::Data<BodyLimits>>().cloned() else {
        return next.call(req).await;
    };
    let budget = limits.budget_for(req.method(), req.path()).cloned();
    let reservation = budget.map(Reservation::new);
    let deadline = reservation.as_ref().map(|_| {
        (
            Instant::now() + limits.buffered_timeout,
            limits.buffered_timeout,
        )
    });
    let payload = req.take_payload();
    let limited = LimitedBody::new(payload, limits.idle_timeout, deadline, reservation.clone());
    req.set_payload(Payload::from(Box::pin(limited) as BoxedBody));
    let response = next.call(req).await;
    drop(reservation);
    response
}

/// Why [`read_to_limit`] could not return a body.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The body is (or says it is) larger than the endpoint accepts.
    #[error("the request body of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    /// berth's time or memory limits cut the body off.
    #[error(transparent)]
    Limit(BodyLimitError),
    /// The client sent a broken body or went away.
    #[error("the request body could not be read: {0}")]
    Broken(String),
}

/// Reads a whole body of at most `limit` bytes. `declared` (the Content-Length) larger than the limit fails before
/// anything is read. Memory grows with what arrives, never with what the client declares.
pub async fn read_to_limit<S>(
    body: S,
    declared: Option<u64>,
    limit: u64,
) -> Result<Bytes, ReadError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    let mut bytes = BytesMut::new();
    read_to_limit_into(body, declared, limit, &mut bytes).await?;
    Ok(bytes.freeze())
}

/// [`read_to_limit`] into `bytes`, which keeps what was read when it fails: a webhook still finds the review's
/// `uid` at the start of a body it cannot read whole.
pub async fn read_to_limit_into<S>(
    mut body: S,
    declared: Option<u64>,
    limit: u64,
    bytes: &mut BytesMut,
) -> Result<(), ReadError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    if let Some(size) = declared.filter(|&size| size > limit) {
        return Err(ReadError::TooLarge { size, limit });
    }
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| match limit_error(&e) {
            Some(limit) => ReadError::Limit(limit.clone()),
            None => ReadError::Broken(e.to_string()),
        })?;
        let size = (bytes.len() as u64).saturating_add(chunk.len() as u64);
        if size > limit {
            // The start of the body stays (at most a chunk past what fits is never copied).
            let room = usize::try_from(limit.saturating_sub(bytes.len() as u64)).unwrap_or(0);
            bytes.extend_from_slice(&chunk[..room.min(chunk.len())]);
            return Err(ReadError::TooLarge { size, limit });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(
        chunks: Vec<Result<Bytes, PayloadError>>,
    ) -> impl Stream<Item = Result<Bytes, PayloadError>> + Unpin {
        futures_util::stream::iter(chunks)
    }

    #[test]
    fn budget_is_shared_and_given_back() {
        let budget = ByteBudget::new(10);
        let first = Reservation::new(budget.clone());
        assert_eq!(first.grow(6), Ok(()));
        let second = Reservation::new(budget.clone());
        assert_eq!(second.grow(5), Err(BodyLimitError::Busy { limit: 10 }));
        assert_eq!(second.grow(4), Ok(()));
        assert_eq!(budget.used(), 10);
        drop(first);
        assert_eq!(budget.used(), 4);
        drop(second);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn only_buffering_endpoints_have_a_budget() {
        let limits = BodyLimits::new(Duration::from_secs(1), Duration::from_secs(1), 100);
        let cases = [
            (Method::POST, "/validate", true),
            (Method::POST, "/mutate", true),
            (Method::PUT, "/v2/a/b/manifests/latest", true),
            (Method::PUT, "/v2/manifests/manifests/x", true),
            (Method::GET, "/v2/a/manifests/latest", false),
            (Method::PUT, "/v2/a/blobs/uploads/123", false),
            (Method::PATCH, "/v2/manifests/blobs/uploads/123", false),
            (Method::POST, "/v2/a/blobs/uploads/", false),
        ];
        for (method, path, buffered) in cases {
            assert_eq!(
                limits.budget_for(&method, path).is_some(),
                buffered,
                "{method} {path}"
            );
        }
    }

    #[tokio::test]
    async fn read_to_limit_refuses_declared_and_actual_excess() {
        let ok = read_to_limit(stream_of(vec![Ok(Bytes::from_static(b"abc"))]), Some(3), 3).await;
        assert_eq!(ok.ok(), Some(Bytes::from_static(b"abc")));
        let declared = read_to_limit(stream_of(vec![]), Some(4), 3).await;
        assert!(matches!(
            declared,
            Err(ReadError::TooLarge { size: 4, limit: 3 })
        ));
        let actual = read_to_limit(
            stream_of(vec![
                Ok(Bytes::from_static(b"ab")),
                Ok(Bytes::from_static(b"cd")),
            ]),
            None,
            3,
        )
        .await;
        assert!(matches!(
            actual,
            Err(ReadError::TooLarge { size: 4, limit: 3 })
        ));
    }

    #[tokio::test]
    async fn a_stalled_body_fails_after_the_idle_timeout() {
        // A body that sends one chunk and then nothing.
        let pending = futures_util::stream::once(async { Ok(Bytes::from_static(b"x")) })
            .chain(futures_util::stream::pending());
        let payload = Payload::from(Box::pin(pending) as BoxedBody);
        let body = LimitedBody::new(payload, Duration::from_millis(100), None, None);
        let read =
            tokio::time::timeout(Duration::from_secs(5), read_to_limit(body, None, 100)).await;
        assert!(
            matches!(read, Ok(Err(ReadError::Limit(BodyLimitError::Idle(d)))) if d == Duration::from_millis(100)),
            "{read:?}"
        );
    }

    #[tokio::test]
    async fn a_trickling_buffered_body_fails_at_its_deadline() {
        // A byte every 50 ms never trips a 1 s idle timeout, but the whole body must arrive within 300 ms.
        let trickle = futures_util::stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some((Ok(Bytes::from_static(b"x")), n + 1))
        });
        let payload = Payload::from(Box::pin(trickle) as BoxedBody);
        let start = Instant::now();
        let deadline = Some((
            start + Duration::from_millis(300),
            Duration::from_millis(300),
        ));
        let body = LimitedBody::new(payload, Duration::from_secs(1), deadline, None);
        let read = read_to_limit(body, None, 1 << 20).await;
        assert!(
            matches!(read, Err(ReadError::Limit(BodyLimitError::Deadline(_)))),
            "{read:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_body_past_the_budget_fails_busy() {
        let budget = ByteBudget::new(4);
        let reservation = Reservation::new(budget.clone());
        // The first UNBUDGETED_BYTES are free; then 3 bytes fit the budget of 4 and 3 more do not.
        let chunks = futures_util::stream::iter(vec![
            Ok(Bytes::from(vec![b'x'; UNBUDGETED_BYTES])),
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"def")),
        ]);
        let payload = Payload::from(Box::pin(chunks) as BoxedBody);
        let body = LimitedBody::new(
            payload,
            Duration::from_secs(5),
            None,
            Some(reservation.clone()),
        );
        let read = read_to_limit(body, None, 1 << 20).await;
        assert!(
            matches!(
                read,
                Err(ReadError::Limit(BodyLimitError::Busy { limit: 4 }))
            ),
            "{read:?}"
        );
        drop(reservation);
        assert_eq!(budget.used(), 0);
    }

    /// Review item: 140 slow 256 KiB bodies took the whole review budget and every ordinary review was then refused.
    /// The start of each body is not charged, so a small body passes while the budget is spent.
    #[tokio::test]
    async fn a_spent_budget_never_refuses_a_small_body() {
        let budget = ByteBudget::new(4);
        let hog = Reservation::new(budget.clone());
        hog.grow(4).expect("take the whole budget");
        let small = vec![b'r'; UNBUDGETED_BYTES];
        let chunks = futures_util::stream::iter(vec![Ok(Bytes::from(small.clone()))]);
        let payload = Payload::from(Box::pin(chunks) as BoxedBody);
        let body = LimitedBody::new(
            payload,
            Duration::from_secs(5),
            None,
            Some(Reservation::new(budget.clone())),
        );
        let read = read_to_limit(body, None, 1 << 20)
            .await
            .expect("a small body is read");
        assert_eq!(read.len(), small.len());
        drop(hog);
        assert_eq!(budget.used(), 0);
    }
}
