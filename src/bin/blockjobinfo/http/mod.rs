//! The exporter's HTTP side: `/metrics` served the way the Prometheus ecosystem expects it, bounded in every
//! dimension a client controls. One event-driven thread serves every connection (hyper on a current-thread
//! tokio runtime), so idle connections cost memory, not threads:
//! - connections: at most `max_connections`; past it, the connection idle the longest is closed for the new one;
//! - time: a connection must deliver a whole request head within `request_timeout` of opening (TLS handshake
//!   included) or of its previous answer, and read each answer within it too;
//! - size: a request head over 8 KiB is refused with 431;
//! - concurrency: at most `max_requests` requests are answered at once, the rest get 503 at once;
//! - TLS (rustls) and basic authentication from an exporter-toolkit web config (`webconfig`, `auth`), read
//!   again when it or a file it names changes, or on SIGHUP: a new certificate or a revoked password takes
//!   effect without a restart (a connection keeps the TLS it began with; every request is checked by the
//!   config in force when it arrives). A config that no longer reads is reported and the one in force kept.
//!
//! What `/metrics` answers is the caller's (`metrics.rs`).

pub mod auth;
pub mod webconfig;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

use auth::{Auth, Verdict};
use webconfig::{RateLimit, WebConfig};

/// Where `--listen` serves when no address is given: loopback, so that exposing the endpoint is a deliberate act.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";

/// The largest request head accepted (hyper's smallest read buffer): larger gets 431.
const MAX_HEAD: usize = 8192;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_requests: usize,
    pub max_connections: usize,
    pub request_timeout: Duration,
}

/// `/metrics`' answer for a scrape that may take at most the given time: the exposition text.
/// A scrape: the exposition text, or None when the readings are too far behind to take it (503 at once).
pub type Scrape = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = Option<String>> + Send>> + Send + Sync>;

/// What is served: a landing page at `/` and the metrics at `/metrics`; every other path is 404.
pub struct Site {
    pub landing: String,
    pub metrics: Scrape,
    /// The longest a scrape may take, unless Prometheus asks for less (X-Prometheus-Scrape-Timeout-Seconds).
    pub scrape_timeout: Duration,
}

/// The listening socket: the one systemd passed (socket activation, `LISTEN_FDS`), or `address` bound here
/// (DEFAULT_LISTEN when None). Both at once is a mistake, said so.
pub fn listener(address: Option<&str>) -> Result<TcpListener, String> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 0 {
        if let Some(a) = address {
            return Err(format!(
                "systemd passed a socket to listen on (LISTEN_FDS): --listen {a} cannot be used too"
            ));
        }
        return fds
            .take_tcp_listener(0)
            .map_err(|e| format!("the socket systemd passed (LISTEN_FDS) is not a TCP socket: {e}"))?
            .ok_or_else(|| "systemd's LISTEN_FDS names no socket".to_string());
    }
    let address = address.unwrap_or(DEFAULT_LISTEN);
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(address)
        .map_err(|e| format!("cannot listen on {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot listen on {address}: no address"))?;
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
        .and_then(|s| {
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            // A backlog that absorbs a burst of connections while the loop accepts them.
            s.listen(1024)?;
            Ok(s)
        })
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    Ok(socket.into())
}

/// Raises the soft limit on open files to the hard one, as Go programs do, so that `max_connections` is not
/// cut short by a default of 1024; returns how many connections fit.
fn connection_room(wanted: usize) -> usize {
    let soft = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    // Descriptors for everything else: libvirt, the listener, stdio, TLS files.
    wanted
        .min(usize::try_from(soft.saturating_sub(64)).unwrap_or(usize::MAX))
        .max(1)
}

/// Password checks at once: one per core this process may run on, four at most (the unit's task bound).
fn cores() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(4)
}

/// How often the web config's files are looked at for a change.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// What a web config makes of a request: TLS for new connections, authentication, headers, a rate limit.
struct Web {
    /// What it protects, which a config read again may not lower.
    strength: webconfig::Strength,
    tls: Option<tokio_rustls::TlsAcceptor>,
    auth: Option<Arc<Auth>>,
    headers: Vec<(hyper::header::HeaderName, HeaderValue)>,
    bucket: Option<Mutex<Bucket>>,
}

impl Web {
    fn new(web: &WebConfig) -> Web {
        Web {
            strength: web.strength,
            tls: web.tls.clone().map(tokio_rustls::TlsAcceptor::from),
            auth: Auth::new(web.users.clone()),
            headers: web
                .headers
                .iter()
                .filter_map(|(n, v)| {
                    Some((
                        hyper::header::HeaderName::try_from(n).ok()?,
                        HeaderValue::try_from(v).ok()?,
                    ))
                })
                .collect(),
            bucket: web.rate_limit.map(Bucket::new),
        }
    }
}

/// SIGHUP reads the web config at `path` again; so does a change to one of its files, once the files have
/// stood still for one look (a file being written is not read half-way). Without a web config, SIGHUP is
/// taken and says so: it never ends the service. Forever.
async fn watch_web_config(
    shared: Arc<Shared>,
    mut hangup: Option<tokio::signal::unix::Signal>,
    path: Option<std::path::PathBuf>,
    mut files: Vec<std::path::PathBuf>,
) {
    let mut seen = webconfig::stamp(&files);
    // A change seen at the last look, read once it looks the same at the next.
    let mut settling: Option<webconfig::Stamp> = None;
    loop {
        let why = tokio::select! {
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
            _ = tokio::time::sleep(WATCH_EVERY), if path.is_some() => {
                let now = webconfig::stamp(&files);
                if now == seen {
                    settling = None;
                    continue;
                }
                if settling.as_ref() != Some(&now) {
                    settling = Some(now);
                    continue;
                }
                "it changed"
            }
        };
        settling = None;
        let Some(path) = &path else {
            eprintln!("blockjobinfo: SIGHUP: there is no web config to read again");
            continue;
        };
        // What is read is at least this new: a change made while it is read is seen next time.
        let before = webconfig::stamp(&files);
        let from = path.clone();
        match tokio::task::spawn_blocking(move || webconfig::load(&from)).await {
            Ok(Ok(web)) => {
                // A file caught half-written, or an operator's slip, would serve less than is served now:
                // plain HTTP where TLS was, anyone where passwords were. Not taken; a restart takes it.
                if let Some(why_not) = shared.web().strength.lowered_by(&web.strength) {
                    // This change has been seen, and none after it: the stamp from before the reading (one taken
                    // now could already hold the next change, made once this line is read, and miss it).
                    seen = before;
                    eprintln!(
                        "blockjobinfo: error: web config {}: not taken: {why_not} (restart the service to do \
                         that); the web config in force is kept",
                        path.display()
                    );
                    continue;
                }
                // Other files named now (a new certificate's name): theirs are the stamps to compare with.
                seen = if web.files == files {
                    before
                } else {
                    webconfig::stamp(&web.files)
                };
                files = web.files.clone();
                *shared.web.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Web::new(&web));
                eprintln!("blockjobinfo: web config {} read again ({why})", path.display());
                for warning in &web.warnings {
                    eprintln!("blockjobinfo: warning: web config {}: {warning}", path.display());
                }
            }
            Ok(Err(e)) => {
                seen = before;
                eprintln!("blockjobinfo: error: {e}; the web config in force is kept");
            }
            Err(e) => eprintln!("blockjobinfo: error: reading the web config again: {e}"),
        }
    }
}

/// The exporter's runtime, made before anything else of the service: SIGHUP is taken from then on, so that a
/// `systemctl reload` never ends the service, however early it comes.
pub struct Server {
    rt: tokio::runtime::Runtime,
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Server {
    pub fn new() -> std::io::Result<Server> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // bcrypt runs there (auth.rs): one per core at most, the threads gone when idle.
            .max_blocking_threads(cores())
            .thread_keep_alive(Duration::from_secs(10))
            .build()?;
        let hangup = {
            let _in = rt.enter();
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| eprintln!("blockjobinfo: SIGHUP cannot be taken: {e}"))
                .ok()
        };
        Ok(Server { rt, hangup })
    }

    /// Serves until the process ends. With `web_config`, the file `web` was read from, it is read again as it
    /// changes. Errors only if the listener cannot be used.
    pub fn serve(
        self,
        listener: TcpListener,
        web: WebConfig,
        web_config: Option<std::path::PathBuf>,
        limits: Limits,
        site: Site,
    ) -> std::io::Result<()> {
        let max_connections = connection_room(limits.max_connections);
        let Server { rt, hangup } = self;
        rt.block_on(async move {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let shared = Shared::new(&web, limits, site);
            tokio::spawn(watch_web_config(shared.clone(), hangup, web_config, web.files.clone()));
            accept(listener, shared, max_connections).await
        })
    }
}

/// Takes connections until the process ends.
async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>, max_connections: usize) -> std::io::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or memory for a moment: the listener stays, the loop goes on.
                eprintln!("blockjobinfo: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if shared.open.load(Ordering::Relaxed) >= max_connections && !shared.evict_oldest_idle() {
            continue; // every connection is busy with a request: this one is closed at once
        }
        let _ = stream.set_nodelay(true);
        // Counted open from here, before its task runs: a burst of connections cannot overshoot the bound.
        tokio::spawn(connection(stream, Tracked::new(shared.clone())));
    }
}

struct Shared {
    /// The web config in force.
    web: std::sync::RwLock<Arc<Web>>,
    requests: Arc<Semaphore>,
    /// Requests waiting for a password check (a bcrypt): at most half of `max_requests`, so that the rest stay
    /// free for requests whose verdict is known (a scraper with the right password).
    checking: Arc<Semaphore>,
    limits: Limits,
    site: Site,
    /// Connections waiting for a request, oldest first: the ones closed when `max_connections` is reached.
    idle: Mutex<BTreeMap<u64, Arc<Notify>>>,
    next: AtomicU64,
    open: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn new(web: &WebConfig, limits: Limits, site: Site) -> Arc<Shared> {
        Arc::new(Shared {
            web: std::sync::RwLock::new(Arc::new(Web::new(web))),
            requests: Arc::new(Semaphore::new(limits.max_requests)),
            checking: Arc::new(Semaphore::new((limits.max_requests / 2).max(1))),
            limits,
            site,
            idle: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            open: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn web(&self) -> Arc<Web> {
        self.web.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Marks a connection idle (waiting for a request); the key orders it among the idle ones.
    fn set_idle(&self, close: &Arc<Notify>) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, close.clone());
        key
    }

    fn set_busy(&self, key: u64) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
    }

    /// Closes the connection idle the longest; false when none is idle.
    fn evict_oldest_idle(&self) -> bool {
        let oldest = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop_first();
        match oldest {
            Some((_, close)) => {
                close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A connection counted open, and closable while idle, for as long as it lives.
struct Tracked {
    shared: Arc<Shared>,
    close: Arc<Notify>,
    /// Its key among the idle connections (stale while it is busy: removing a missing key does nothing).
    idle_key: Mutex<u64>,
}

impl Tracked {
    fn new(shared: Arc<Shared>) -> Arc<Tracked> {
        shared.open.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let key = shared.set_idle(&close);
        Arc::new(Tracked {
            shared,
            close,
            idle_key: Mutex::new(key),
        })
    }

    fn busy(&self) {
        self.shared
            .set_busy(*self.idle_key.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn idle(&self) {
        *self.idle_key.lock().unwrap_or_else(|p| p.into_inner()) = self.shared.set_idle(&self.close);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.busy();
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection, from accept to close: TLS (if configured), then HTTP/1.1 requests, each within the deadline.
async fn connection(stream: tokio::net::TcpStream, conn: Arc<Tracked>) {
    let shared = conn.shared.clone();
    // The deadline for the next request head (None while a request is being answered).
    let (deadline_tx, mut deadline_rx) = watch::channel(Some(Instant::now() + shared.limits.request_timeout));
    // The TLS in force when the connection came: a reload serves connections that come later.
    let web = shared.web();
    let serve = async {
        match &web.tls {
            None => http(stream, &conn, &deadline_tx).await,
            Some(acceptor) => {
                if plain_http_on_tls(&stream).await {
                    let mut stream = stream;
                    let _ = stream
                        .write_all(
                            b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n\
                              Client sent an HTTP request to an HTTPS server.\n",
                        )
                        .await;
                    return;
                }
                if let Ok(tls) = acceptor.accept(stream).await {
                    http(tls, &conn, &deadline_tx).await;
                }
            }
        }
    };
    tokio::pin!(serve);
    loop {
        let deadline = *deadline_rx.borrow_and_update();
        tokio::select! {
            _ = &mut serve => return,
            changed = deadline_rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => return,
            _ = conn.close.notified() => return,
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

/// Whether a client on the TLS port speaks plain HTTP (a request line, where a TLS client sends a handshake).
async fn plain_http_on_tls(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

async fn http<S>(io: S, conn: &Arc<Tracked>, deadline: &watch::Sender<Option<Instant>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = conn.shared.limits.request_timeout;
    let service = hyper::service::service_fn(|req: Request<Incoming>| {
        let (conn, deadline) = (conn.clone(), deadline.clone());
        async move {
            // A whole head arrived: no deadline, and not closable as idle, while it is answered.
            deadline.send_replace(None);
            conn.busy();
            let response = answer(&conn.shared, req).await;
            conn.idle();
            deadline.send_replace(Some(Instant::now() + timeout));
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

async fn answer(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    // The config in force when the request came: a password revoked since is refused.
    let web = shared.web();
    let mut response = route(shared, &web, req).await;
    for (name, value) in &web.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

async fn route(shared: &Arc<Shared>, web: &Web, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(bucket) = &web.bucket {
        if !bucket.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return text(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n");
        }
    }
    let busy = || {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "Limit of concurrent requests reached ({}), try again later.\n",
                shared.limits.max_requests
            ),
        )
    };
    // A request counts toward `max_requests` from here, its password check included.
    let Ok(_slot) = shared.requests.clone().try_acquire_owned() else {
        return busy();
    };
    if let Some(auth) = &web.auth {
        let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes().to_vec());
        let verdict = match auth.cached(header.as_deref()) {
            Some(v) => v,
            None => {
                // Waiting for a bcrypt: within the bound of such requests, or 503 at once. The check holds its
                // permit itself, so that a client that hangs up does not free it while its bcrypt still waits.
                let Ok(checking) = shared.checking.clone().try_acquire_owned() else {
                    return busy();
                };
                let auth = auth.clone();
                tokio::task::spawn_blocking(move || {
                    let _checking = checking;
                    auth.check(header.as_deref())
                })
                .await
                .unwrap_or(Verdict::Denied)
            }
        };
        if verdict == Verdict::Denied {
            let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
            return r;
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/" => {
            let mut r = text(StatusCode::OK, shared.site.landing.clone());
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            r
        }
        "/metrics" => {
            let timeout = scrape_timeout(&req, shared.site.scrape_timeout);
            let Some(body) = (shared.site.metrics)(timeout).await else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The readings of the host are behind (one does not return), try again later.\n",
                );
            };
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

/// The time a scrape may take: ours, or less when Prometheus says it gives up sooner (its header, with a margin
/// for the answer to travel).
fn scrape_timeout(req: &Request<Incoming>, ours: Duration) -> Duration {
    let theirs = req
        .headers()
        .get("X-Prometheus-Scrape-Timeout-Seconds")
        .and_then(|v| v.to_str().ok()?.trim().parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s * 0.9).ok());
    theirs.map_or(ours, |t| t.min(ours))
}

/// A token bucket (the web config's `rate_limit`).
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: RateLimit) -> Mutex<Bucket> {
        Mutex::new(Bucket {
            limit,
            tokens: f64::from(limit.burst),
            at: Instant::now(),
        })
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() / self.limit.interval.as_secs_f64();
        self.tokens = (self.tokens + earned).min(f64::from(self.limit.burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The body of the HTTP fuzz target (fuzz/) and of its regressions (tests/fuzz_regressions.rs): `data`, as a
/// client sends it, through hyper's parser and `route`, with basic authentication on. Nothing panics, whatever
/// comes back is an HTTP/1.x answer, and the metrics are only ever given to the right password.
#[allow(dead_code)] // not called by the tool itself
pub fn fuzz_request(data: &[u8]) {
    use std::sync::OnceLock;
    use tokio::io::AsyncReadExt;
    // The cheapest bcrypt cost: a check per input must not take a quarter of a second.
    static HASH: OnceLock<String> = OnceLock::new();
    let hash = HASH.get_or_init(|| bcrypt::hash("p", 4).expect("bcrypt"));
    let mut web = WebConfig::plain();
    web.users.insert("u".into(), hash.clone());
    web.headers.push(("X-Frame-Options".into(), "deny".into()));
    let site = Site {
        landing: "landing\n".into(),
        metrics: Arc::new(|_| Box::pin(async { Some("the_metric 1\n".to_string()) })),
        scrape_timeout: Duration::from_secs(1),
    };
    let limits = Limits {
        max_requests: 4,
        max_connections: 4,
        request_timeout: Duration::from_secs(2),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let answer = rt.block_on(async {
        let conn = Tracked::new(Shared::new(&web, limits, site));
        let (mut client, server) = tokio::io::duplex(MAX_HEAD * 4);
        let (deadline, _) = watch::channel(None);
        let talk = async {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut answer = vec![];
            let _ = (&mut client).take(1 << 20).read_to_end(&mut answer).await;
            answer
        };
        let serve = async {
            http(server, &conn, &deadline).await;
        };
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(serve, talk).1 })
            .await
            .expect("a request is answered or closed within its timeout")
    });
    if !answer.is_empty() {
        // HTTP/1.0 to a client that speaks it.
        assert!(answer.starts_with(b"HTTP/1."), "{:?}", String::from_utf8_lossy(&answer));
    }
    // "u:p", in base64, in an Authorization header: the metrics never go to a request without it.
    if answer.windows(b"the_metric".len()).any(|w| w == b"the_metric") {
        let lower = data.to_ascii_lowercase();
        let needle = b"authorization:";
        let authorized = lower.windows(needle.len()).enumerate().any(|(i, w)| {
            w == needle
                && data[i + needle.len()..]
                    .split(|&b| b == b'\n')
                    .next()
                    .is_some_and(|v| v.windows(4).any(|w| w == b"dTpw"))
        });
        assert!(authorized, "metrics without the password");
    }
}
