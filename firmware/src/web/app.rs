//! The page's routes and who may use them.
//!
//! Public: `/login` (the form, or first-time setup while no admin exists),
//! `/static/…`, and `/metrics` when `metrics_public`. Every other HTML route
//! answers 303 to `/login` without a session; `/api/…` answers 401 with a JSON
//! error (a session or a viewer bearer token opens it); `/metrics` takes a
//! session or a metrics token. POST forms carry the session's CSRF token and
//! must come from this origin (Origin / Sec-Fetch-Site); admin actions answer
//! 403 to a viewer. Every answer carries the security headers.

use super::audit::{Audit, AuditEvent};
use super::auth::{self, LOGIN_COOKIE, SESSION_COOKIE, Sessions, SetupCode, Throttle, Viewer};
use super::listen::Peer;
use super::settings::WebConfig;
use super::{Appliance, pages, site, views};
use crate::accounts::{AccountChange, TokenRole, User, UserRole};
use crate::metrics::defs;
use crate::store::DataDir;
use crate::store::reader::Reader;
use axum::extract::{FromRequestParts, Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Password verifications running at once (argon2id takes 19 MiB each).
const ARGON_SLOTS: usize = 2;
/// How long a login waits for a verification slot before answering 503.
const ARGON_WAIT: Duration = Duration::from_secs(10);
/// Bearer tokens are read from the state file at most this often.
const TOKEN_CACHE_MS: u64 = 5_000;
/// Largest form or request body.
const MAX_BODY: usize = 64 * 1024;

/// Stored bearer tokens: (name, role, SHA-256).
type TokenList = Vec<(String, TokenRole, [u8; 32])>;

/// The page's shared state.
#[derive(Clone)]
pub struct State(pub Arc<Inner>);

pub struct Inner {
    pub app: Appliance,
    pub metrics_public: bool,
    /// The configuration file `run` was started with (for the diagnostics bundle).
    pub config_file: Option<std::path::PathBuf>,
    pub sessions: Sessions,
    pub throttle: Throttle,
    pub setup: SetupCode,
    pub audit: Audit,
    argon: Semaphore,
    tokens: Mutex<Option<(u64, TokenList)>>,
    pub fingerprint: String,
    pub cert_not_after_ms: Option<u64>,
    pub started_ms: u64,
    urls: Mutex<Vec<SocketAddr>>,
    /// Records per second per exporter, from the live counters (housekeeping).
    rates: Mutex<RateTable>,
    /// The SIEM destinations of the configuration in force (a reload replaces them).
    forward: Mutex<Vec<crate::forward::settings::ForwardConfig>>,
}

/// Per exporter: (counter at the last sample, its time, records/s since the one before).
#[derive(Default)]
struct RateTable(std::collections::HashMap<String, (u64, u64, f64)>);

impl std::ops::Deref for State {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl State {
    pub fn new(mut app: Appliance, cfg: &WebConfig, fingerprint: String, cert_not_after_ms: Option<u64>) -> State {
        let started_ms = (app.clock)();
        State(Arc::new(Inner {
            metrics_public: cfg.metrics_public,
            config_file: cfg.config_file.clone(),
            sessions: Sessions::new(cfg.session_idle.ms()),
            throttle: Throttle::default(),
            setup: SetupCode::default(),
            audit: Audit::default(),
            argon: Semaphore::new(ARGON_SLOTS),
            tokens: Mutex::new(None),
            fingerprint,
            cert_not_after_ms,
            started_ms,
            urls: Mutex::new(Vec::new()),
            rates: Mutex::new(RateTable::default()),
            // The page reads the destinations in force here only (a reload replaces them).
            forward: Mutex::new(std::mem::take(&mut app.forward)),
            app,
        }))
    }

    /// The SIEM destinations of the configuration in force.
    pub fn forward(&self) -> Vec<crate::forward::settings::ForwardConfig> {
        self.forward.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A reloaded configuration's SIEM destinations and names for addresses.
    pub fn reconfigure(&self, forward: Vec<crate::forward::settings::ForwardConfig>, names: Vec<crate::net::NamedNet>) {
        *self.forward.lock().unwrap_or_else(|p| p.into_inner()) = forward;
        super::html::set_names(names);
    }

    pub fn now(&self) -> u64 {
        (self.app.clock)()
    }

    pub fn reader(&self) -> Reader {
        Reader::new(DataDir::new(&self.app.data_dir))
    }

    /// An exporter's records per second over the last sampling interval.
    pub fn record_rate(&self, exporter: &str) -> f64 {
        let r = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        r.0.get(exporter).map(|x| x.2).unwrap_or(0.0)
    }

    /// Sample the per-exporter record counters (as many as the registry keeps series).
    fn sample_rates(&self) {
        let now = self.now();
        let mut r = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        for s in self.app.metrics.snapshot() {
            if s.name != defs::DECODE_RECORDS.name {
                continue;
            }
            let Some((_, exporter)) = s.labels.first() else { continue };
            let e = r.0.entry(exporter.clone()).or_insert((s.value, now, 0.0));
            let dt = now.saturating_sub(e.1);
            if dt >= 1000 {
                *e = (s.value, now, s.value.saturating_sub(e.0) as f64 * 1000.0 / dt as f64);
            }
        }
    }

    pub fn set_urls(&self, urls: &[SocketAddr]) {
        *self.urls.lock().unwrap_or_else(|p| p.into_inner()) = urls.to_vec();
    }

    pub fn urls(&self) -> Vec<SocketAddr> {
        self.urls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether an admin exists; while none does, a setup code is kept (a new
    /// one is returned when made). Reading the users failing counts as "none".
    pub fn refresh_setup(&self) -> Option<String> {
        let has_admin = crate::accounts::load_users(&self.reader())
            .map(|u| u.iter().any(|(_, u)| u.role == UserRole::Admin))
            .unwrap_or(false);
        if has_admin {
            self.setup.set(None);
            None
        } else if self.setup.active() {
            None
        } else {
            let code = auth::SetupCode::generate();
            self.setup.set(code.clone());
            if let Some(c) = &code {
                // stdout only (the serial console on the image), never the log: a secret until used.
                let _ = std::io::Write::write_all(&mut std::io::stdout(), format!("flowwarden: web setup code {c}\n").as_bytes());
                tracing::info!("web: no admin yet; the setup code is on stdout (the console)");
            }
            code
        }
    }

    /// An audit event: logged, kept for `/system`, and spooled for every SIEM destination.
    fn audit(&self, action: &str, actor: &str, addr: IpAddr, detail: impl Into<String>) {
        let record = crate::forward::event::AuditRecord {
            action: action.into(),
            actor: actor.into(),
            addr: addr.to_string(),
            detail: detail.into(),
        };
        if let Some(outbox) = &self.app.audit_outbox {
            let dropped = outbox.push_audit(record.clone());
            self.evicted("audit_outbox", dropped);
        }
        self.audit.record(AuditEvent { at_ms: self.now(), record });
    }

    /// PID 1's update events (installed, refused, marked good, rolled back): into the
    /// audit trail, the log and the SIEM like the page's own (only on the image).
    pub fn take_system_events(&self) {
        if self.app.host_status_dir.is_none() {
            return;
        }
        for e in crate::update::take_events(&self.app.data_dir) {
            self.audit(&e.action, "system", IpAddr::from([0, 0, 0, 0]), e.detail);
        }
    }

    /// An admin action, audited.
    pub fn audit_action(&self, v: &Viewer, addr: IpAddr, action: &str, detail: String) {
        self.audit(action, &v.name, addr, detail);
    }

    /// Add or change (`set`) or remove a user from the page.
    pub async fn user_change(&self, action: &str, name: &str, role: &str, password: String) -> Result<String, String> {
        crate::accounts::check_name(name).map_err(|e| e.to_string())?;
        let change = match action {
            "set" => {
                let role = match role {
                    "admin" => UserRole::Admin,
                    "viewer" => UserRole::Viewer,
                    other => return Err(format!("role {other:?}: expected admin or viewer")),
                };
                let hash = self.hash(password).await?;
                AccountChange::SetUser {
                    name: name.to_string(),
                    user: User {
                        role,
                        hash,
                        changed_ms: self.now(),
                    },
                }
            }
            "remove" => AccountChange::RemoveUser { name: name.to_string() },
            other => return Err(format!("action {other:?}: expected set or remove")),
        };
        let users = crate::accounts::load_users(&self.reader()).map_err(|e| e.to_string())?;
        let other_admin = users.iter().any(|(n, u)| n != name && u.role == UserRole::Admin);
        let demotes = match &change {
            AccountChange::SetUser { user, .. } => user.role != UserRole::Admin,
            _ => true,
        };
        if demotes && !other_admin && users.iter().any(|(n, u)| n == name && u.role == UserRole::Admin) {
            return Err(format!("{name} is the last admin: add another admin first"));
        }
        if !users.iter().any(|(n, _)| n == name) && !matches!(change, AccountChange::SetUser { .. }) {
            return Err(format!("no user {name:?}"));
        }
        self.change(change).await?;
        // A removed user, or one whose password or role changed, logs in again.
        self.sessions.end_user(name);
        Ok(match action {
            "set" => format!("user {name} set"),
            _ => format!("user {name} removed"),
        })
    }

    fn evicted(&self, table: &str, n: u64) {
        if n > 0 {
            self.app.metrics.counter(&defs::WEB_TABLE_EVICTED, &[table]).add(n);
        }
    }

    /// The stored tokens (name, role, digest), re-read at most every few seconds.
    fn tokens(&self) -> TokenList {
        let now = self.now();
        let mut cache = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, list)) = &*cache
            && now.saturating_sub(*at) < TOKEN_CACHE_MS
            && now >= *at
        {
            return list.clone();
        }
        let list: Vec<_> = crate::accounts::load_tokens(&self.reader())
            .unwrap_or_default()
            .into_iter()
            .map(|(n, t)| (n, t.role, t.sha256))
            .collect();
        *cache = Some((now, list.clone()));
        list
    }

    /// Apply an account change through the control channel's handler (the
    /// store writer commits it).
    async fn change(&self, change: AccountChange) -> Result<(), String> {
        self.control(crate::control::Request::Accounts(change)).await?;
        *self.tokens.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    /// Acknowledge an alert through the control channel's handler (the store writer commits it).
    pub async fn ack(&self, id: &str, by: &str) -> Result<(), String> {
        self.control(crate::control::Request::AckAlert {
            id: id.to_string(),
            by: by.to_string(),
            at_ms: self.now(),
        })
        .await
        .map(|_| ())
    }

    /// Ask the control channel's handler (it blocks until the store writer committed).
    pub async fn control(&self, req: crate::control::Request) -> Result<String, String> {
        let Some(handler) = self.app.control.clone() else {
            return Err("this appliance cannot change state from the page".into());
        };
        match tokio::task::spawn_blocking(move || handler(req)).await {
            Ok(crate::control::Reply::Done) => Ok(String::new()),
            Ok(crate::control::Reply::Reloaded(what)) => Ok(what),
            Ok(crate::control::Reply::Refused(why)) => Err(why),
            Err(e) => Err(format!("the change did not run: {e}")),
        }
    }

    /// Run argon2id off the async threads, at most [`ARGON_SLOTS`] at once.
    async fn verify(&self, hash: String, password: String) -> Option<bool> {
        let _slot = tokio::time::timeout(ARGON_WAIT, self.argon.acquire()).await.ok()?.ok()?;
        tokio::task::spawn_blocking(move || crate::accounts::verify_password(&hash, &password))
            .await
            .ok()
    }

    async fn hash(&self, password: String) -> Result<String, String> {
        let _slot = tokio::time::timeout(ARGON_WAIT, self.argon.acquire())
            .await
            .map_err(|_| "the appliance is busy; try again".to_string())?
            .map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || crate::accounts::hash_password(&password).map_err(|e| e.to_string()))
            .await
            .map_err(|e| e.to_string())?
    }
}

/// Housekeeping until `stop`: the sessions gauge.
pub async fn housekeeping(state: State, mut stop: tokio::sync::watch::Receiver<bool>) {
    let gauge = state.app.metrics.gauge(&defs::WEB_SESSIONS, &[]);
    let stage = crate::progress::global().stage("web");
    loop {
        let unit = stage.busy();
        gauge.set(state.sessions.count(state.now()) as u64);
        state.sample_rates();
        state.take_system_events();
        drop(unit);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => break,
        }
    }
}

/// Every route.
pub fn router(state: State) -> Router {
    let html = Router::new()
        .route("/", get(pages::overview))
        .route("/exporters", get(pages::exporters))
        .route("/traffic", get(pages::traffic))
        .route("/alerts", get(pages::alerts))
        .route("/alerts/{id}", get(pages::alert))
        .route("/alerts/{id}/ack", post(pages::alert_ack))
        .route("/flows", get(pages::flows))
        .route("/storage", get(pages::storage))
        .route("/forwarding", get(pages::forwarding))
        .route("/system", get(pages::system))
        .route("/logout", post(logout))
        .route("/forwarding/test", post(pages::forward_test))
        .route("/system/users", post(pages::user_change))
        .route("/system/network/keep", post(pages::network_keep))
        // A bundle is tens of MiB: this route alone takes up to the bundle limit.
        .route(
            "/system/update",
            post(pages::update_upload).layer(axum::extract::DefaultBodyLimit::max(crate::update::MAX_BUNDLE as usize)),
        )
        .route("/system/update/acknowledge", post(pages::update_acknowledge))
        .route("/system/backup", post(pages::backup_download))
        // A backup carries the state file's tables: up to the archive limit.
        .route(
            "/system/restore",
            post(pages::restore_upload).layer(axum::extract::DefaultBodyLimit::max(crate::backup::MAX_ARCHIVE as usize)),
        )
        .route("/system/diagnostics", get(views::diagnostics))
        .route("/settings", get(site::settings))
        .route("/settings/preview", post(site::preview_form))
        .route("/settings/destination", post(site::destination_form_post))
        .route("/settings/revert", post(site::revert))
        .route("/settings/apply", post(site::apply));
    let api = Router::new()
        .route("/api/v1/status", get(views::api_status))
        .route("/api/v1/exporters", get(views::api_exporters))
        .route("/api/v1/traffic", get(views::api_traffic))
        .route("/api/v1/alerts", get(views::api_alerts))
        .route("/api/v1/alerts/{id}", get(views::api_alert))
        .route("/api/v1/flows", get(views::api_flows))
        .route("/api/v1/storage", get(views::api_storage))
        .route("/api/v1/forwarding", get(views::api_forwarding))
        .route("/api/v1/system", get(views::api_system));
    Router::new()
        .merge(html)
        .merge(api)
        .route("/login", get(login_page).post(login))
        .route("/setup", post(setup))
        .route("/metrics", get(metrics))
        .route("/static/style.css", get(style))
        .route("/static/page.js", get(script))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(headers))
        .with_state(state)
}

/// The security headers on every answer; `no-store` on everything but the static files.
async fn headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; \
         form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "x-frame-options", "DENY");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    res
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("static/style.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("static/page.js"),
    )
        .into_response()
}

async fn not_found(viewer: Option<Viewer>) -> Response {
    let body = pages::message_page(viewer.as_ref(), "Not found", "There is no page at this address.", "/", "Overview");
    (StatusCode::NOT_FOUND, Html(body)).into_response()
}

/// The source address of a request.
pub fn peer_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<Peer>()
        .map(|p| p.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// A cookie's value from the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Why a request without a usable identity is turned away.
pub enum Rejection {
    Login,
    Unauthorized(&'static str),
    Forbidden(&'static str),
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        match self {
            Rejection::Login => (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response(),
            Rejection::Unauthorized(why) => (StatusCode::UNAUTHORIZED, Json(serde_json::json!({ "error": why }))).into_response(),
            Rejection::Forbidden(why) => (StatusCode::FORBIDDEN, Json(serde_json::json!({ "error": why }))).into_response(),
        }
    }
}

/// The open session a request's cookie names (touched: its idle time starts again).
fn session(headers: &HeaderMap, state: &State) -> Option<Viewer> {
    cookie(headers, SESSION_COOKIE).and_then(|id| state.sessions.get(id, state.now()))
}

impl FromRequestParts<State> for Viewer {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &State) -> Result<Self, Self::Rejection> {
        let api = parts.uri.path().starts_with("/api/");
        if let Some(v) = session(&parts.headers, state) {
            return Ok(v);
        }
        if api {
            if let Some(token) = bearer(&parts.headers) {
                return match auth::token_role(&state.tokens(), token) {
                    Some((name, TokenRole::Viewer)) => Ok(Viewer {
                        name: format!("token:{name}"),
                        role: UserRole::Viewer,
                        csrf: String::new(),
                    }),
                    Some((_, TokenRole::Metrics)) => Err(Rejection::Forbidden("a metrics token opens /metrics only")),
                    None => Err(Rejection::Unauthorized("unknown bearer token")),
                };
            }
            return Err(Rejection::Unauthorized("log in or send Authorization: Bearer with a viewer token"));
        }
        Err(Rejection::Login)
    }
}

impl axum::extract::OptionalFromRequestParts<State> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &State) -> Result<Option<Self>, Self::Rejection> {
        Ok(session(&parts.headers, state))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// A form post from a page of this appliance: Sec-Fetch-Site (when sent) says
/// same-origin, Origin (when sent) is this host, and `given` is `expected`.
/// Under `Referrer-Policy: no-referrer` browsers send `Origin: null` on form
/// posts; that is accepted only together with `Sec-Fetch-Site: same-origin`.
pub fn csrf_ok(headers: &HeaderMap, expected: &str, given: &str) -> bool {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| !matches!(s, "same-origin" | "none")) {
        return false;
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let ok = if origin == "null" {
            site == Some("same-origin")
        } else {
            origin == format!("https://{host}")
        };
        if !ok {
            return false;
        }
    }
    !expected.is_empty() && auth::same(expected.as_bytes(), given.as_bytes())
}

/// The CSRF refusal as a page.
pub fn csrf_refused(viewer: Option<&Viewer>) -> Response {
    let body = pages::message_page(
        viewer,
        "Refused",
        "This form did not come from this appliance's page (or it was open too long). Reload the page and try again.",
        "/",
        "Overview",
    );
    (StatusCode::FORBIDDEN, Html(body)).into_response()
}

/// `Set-Cookie` for a `__Host-` cookie (`max_age` None: a session cookie; Some(0): delete).
fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let age = max_age.map(|a| format!("; Max-Age={a}")).unwrap_or_default();
    HeaderValue::from_str(&format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict{age}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn login_page(AxState(state): AxState<State>, headers: HeaderMap) -> Response {
    login_form(&state, &headers, StatusCode::OK, None)
}

/// The login form (or the setup form while no admin exists) with the
/// double-submit token: the browser's own if it has a well-formed one, else new.
fn login_form(state: &State, headers: &HeaderMap, status: StatusCode, error: Option<&str>) -> Response {
    state.refresh_setup();
    let token = cookie(headers, LOGIN_COOKIE)
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .or_else(auth::random_hex)
        .unwrap_or_default();
    let body = pages::login(state.setup.active(), &token, error);
    let mut res = (status, Html(body)).into_response();
    res.headers_mut()
        .append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &token, Some(3600)));
    res
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

/// Start a session: the cookie and 303 to `/`.
fn logged_in(state: &State, user: &str, role: UserRole) -> Response {
    let Some((id, evicted)) = state.sessions.create(user, role, state.now()) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no randomness for a session id").into_response();
    };
    state.evicted("sessions", evicted);
    let mut res = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    res.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &id, None));
    res.headers_mut().append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", Some(0)));
    res
}

async fn login(AxState(state): AxState<State>, parts: Parts, Form(f): Form<LoginForm>) -> Response {
    let ip = peer_ip(&parts);
    let expected = cookie(&parts.headers, LOGIN_COOKIE).unwrap_or("");
    if !csrf_ok(&parts.headers, expected, &f.csrf) {
        return login_form(
            &state,
            &parts.headers,
            StatusCode::FORBIDDEN,
            Some("The form expired or came from elsewhere; try again."),
        );
    }
    let now = state.now();
    let metric = |r: &str| state.app.metrics.counter(&defs::WEB_LOGINS, &[r]).inc();
    if let Some(w) = state.throttle.check(ip, &f.user, now) {
        metric("throttled");
        let who = shown_name(&f.user);
        state.audit(
            "login_throttled",
            &who,
            ip,
            format!("user {who:?}: refused, wait {} s", w.ms.div_ceil(1000)),
        );
        let msg = format!("Too many failed logins from {}: try again in {} s.", w.what, w.ms.div_ceil(1000));
        return login_form(&state, &parts.headers, StatusCode::TOO_MANY_REQUESTS, Some(&msg));
    }
    let user = crate::accounts::load_users(&state.reader())
        .ok()
        .and_then(|l| l.into_iter().find(|(n, _)| *n == f.user).map(|(_, u)| u));
    // An unknown user costs the same verification as a known one.
    let (hash, role) = match &user {
        Some(u) => (u.hash.clone(), Some(u.role)),
        None => (DUMMY_HASH.to_string(), None),
    };
    match (state.verify(hash, f.password).await, role) {
        (Some(true), Some(role)) => {
            metric("ok");
            state.throttle.success(ip, &f.user);
            state.audit("login", &f.user, ip, format!("logged in ({})", role.as_str()));
            logged_in(&state, &f.user, role)
        }
        (None, _) => login_form(
            &state,
            &parts.headers,
            StatusCode::SERVICE_UNAVAILABLE,
            Some("The appliance is busy; try again."),
        ),
        _ => {
            metric("failed");
            let evicted = state.throttle.fail(ip, &f.user, now);
            state.evicted("login_failures", evicted);
            let who = shown_name(&f.user);
            state.audit("login_failed", &who, ip, format!("user {who:?}: wrong user name or password"));
            login_form(
                &state,
                &parts.headers,
                StatusCode::UNAUTHORIZED,
                Some("Wrong user name or password."),
            )
        }
    }
}

/// A user name as typed into the form, fit for logs and the SIEM: at most 64
/// characters, control characters replaced.
fn shown_name(s: &str) -> String {
    let mut out: String = s.chars().take(64).map(|c| if c.is_control() { '?' } else { c }).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    if out.is_empty() { "-".into() } else { out }
}

/// An argon2id hash of a random password, verified against when the user does not exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0LUh0M1aw2Dxm4b2FZZ+MtX3wd3ie2f9mXBDYfYSg9k";

#[derive(Deserialize)]
pub struct SetupForm {
    #[serde(default)]
    code: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    password2: String,
    #[serde(default)]
    csrf: String,
}

/// First-time setup: the setup code and a new admin's name and password.
async fn setup(AxState(state): AxState<State>, parts: Parts, Form(f): Form<SetupForm>) -> Response {
    let ip = peer_ip(&parts);
    let expected = cookie(&parts.headers, LOGIN_COOKIE).unwrap_or("");
    if !csrf_ok(&parts.headers, expected, &f.csrf) {
        return login_form(
            &state,
            &parts.headers,
            StatusCode::FORBIDDEN,
            Some("The form expired or came from elsewhere; try again."),
        );
    }
    state.refresh_setup();
    if !state.setup.active() {
        return login_form(
            &state,
            &parts.headers,
            StatusCode::CONFLICT,
            Some("An admin exists already: log in."),
        );
    }
    let now = state.now();
    if let Some(w) = state.throttle.check(ip, "(setup)", now) {
        state.app.metrics.counter(&defs::WEB_LOGINS, &["throttled"]).inc();
        let msg = format!(
            "Too many wrong setup codes from {}: try again in {} s.",
            w.what,
            w.ms.div_ceil(1000)
        );
        return login_form(&state, &parts.headers, StatusCode::TOO_MANY_REQUESTS, Some(&msg));
    }
    if !state.setup.matches(&f.code) {
        let evicted = state.throttle.fail(ip, "(setup)", now);
        state.evicted("login_failures", evicted);
        state.audit("setup_failed", "-", ip, "wrong setup code");
        return login_form(
            &state,
            &parts.headers,
            StatusCode::UNAUTHORIZED,
            Some("Wrong setup code (it is on the console and in run's output)."),
        );
    }
    let problem = if let Err(e) = crate::accounts::check_name(&f.user) {
        Some(e.to_string())
    } else if f.password != f.password2 {
        Some("The two passwords differ.".to_string())
    } else if state.setup.matches(&f.password) {
        Some("The password must not be the setup code.".to_string())
    } else {
        crate::accounts::check_password(&f.password).err().map(|e| e.to_string())
    };
    if let Some(p) = problem {
        return login_form(&state, &parts.headers, StatusCode::BAD_REQUEST, Some(&p));
    }
    let hash = match state.hash(f.password).await {
        Ok(h) => h,
        Err(e) => return login_form(&state, &parts.headers, StatusCode::SERVICE_UNAVAILABLE, Some(&e)),
    };
    let change = AccountChange::SetUser {
        name: f.user.clone(),
        user: User {
            role: UserRole::Admin,
            hash,
            changed_ms: now,
        },
    };
    if let Err(e) = state.change(change).await {
        return login_form(&state, &parts.headers, StatusCode::SERVICE_UNAVAILABLE, Some(&e));
    }
    // The code dies with the first admin.
    state.setup.set(None);
    state.app.metrics.counter(&defs::WEB_LOGINS, &["setup"]).inc();
    state.audit("setup", &f.user, ip, format!("first admin {} created with the setup code", f.user));
    logged_in(&state, &f.user, UserRole::Admin)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(AxState(state): AxState<State>, viewer: Viewer, parts: Parts, Form(f): Form<CsrfForm>) -> Response {
    if !csrf_ok(&parts.headers, &viewer.csrf, &f.csrf) {
        return csrf_refused(Some(&viewer));
    }
    if let Some(id) = cookie(&parts.headers, SESSION_COOKIE) {
        state.sessions.end(id);
    }
    state.audit("logout", &viewer.name, peer_ip(&parts), "logged out");
    let mut res = (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response();
    res.headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", Some(0)));
    res
}

/// `/metrics`: the live registry in the Prometheus text format 0.0.4.
async fn metrics(AxState(state): AxState<State>, headers: HeaderMap) -> Response {
    let allowed = state.metrics_public
        || session(&headers, &state).is_some()
        || bearer(&headers).is_some_and(|t| matches!(auth::token_role(&state.tokens(), t), Some((_, TokenRole::Metrics))));
    if !allowed {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"flowwarden\"")],
            Json(serde_json::json!({ "error": "send Authorization: Bearer with a metrics token" })),
        )
            .into_response();
    }
    state.app.metrics.gauge(&defs::SNAPSHOT_TIME, &[]).set(state.now() / 1000);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.app.metrics.prometheus(),
    )
        .into_response()
}

/// Query strings of the list views (all optional).
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    pub filter: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub page: Option<u64>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub limit: Option<u64>,
    pub format: Option<String>,
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub severity: Option<u8>,
    pub host: Option<String>,
    pub since: Option<String>,
    pub range: Option<String>,
}

/// A number from a form field: an empty field (a form submitted with it
/// blank) is no value; anything else must parse (the 400 names the field).
fn empty_as_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => t.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// The list views' query-string extractor.
pub type Q = Query<ListQuery>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_form_numbers_are_no_value() {
        let parse = |q: &str| {
            let uri: axum::http::Uri = format!("/alerts?{q}").parse().unwrap_or_default();
            Query::<ListQuery>::try_from_uri(&uri).map(|q| q.0)
        };
        let q = parse("kind=scan&severity=&host=&limit=50").unwrap_or_default();
        assert_eq!((q.severity, q.limit, q.kind.as_deref()), (None, Some(50), Some("scan")));
        assert!(parse("severity=high").is_err());
    }

    #[test]
    fn the_stand_in_hash_is_a_real_argon2id_hash() {
        // Unknown users must cost one full verification, like known ones.
        let parsed = argon2::PasswordHash::new(DUMMY_HASH).map(|h| h.algorithm.to_string());
        assert_eq!(parsed.ok().as_deref(), Some("argon2id"));
        assert!(!crate::accounts::verify_password(DUMMY_HASH, "a good long password"));
    }

    #[test]
    fn csrf_needs_the_token_and_this_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("box:8443"));
        assert!(csrf_ok(&h, "abc", "abc"));
        assert!(!csrf_ok(&h, "abc", "abd"));
        assert!(!csrf_ok(&h, "", ""), "no session token, no post");
        h.insert(header::ORIGIN, HeaderValue::from_static("https://box:8443"));
        assert!(csrf_ok(&h, "abc", "abc"));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!csrf_ok(&h, "abc", "abc"));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!csrf_ok(&h, "abc", "abc"));
        // Browsers send Origin: null on form posts under Referrer-Policy: no-referrer.
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(csrf_ok(&h, "abc", "abc"));
        h.remove("sec-fetch-site");
        assert!(!csrf_ok(&h, "abc", "abc"), "null origin without Sec-Fetch-Site");
    }
}
