//! The JSON log line: one object per event, carrying the event's fields and
//! the fields of every span it happened in — so a line written deep inside a
//! request (an order transition, a provider retry) carries the request's
//! `request_id`, `method`, `route` and `module`, plus whatever inner spans add
//! (`order_id`, `customer`). On a name clash the event wins over its spans,
//! an inner span over an outer one; each name appears once.
//!
//! ```json
//! {"timestamp":"2026-01-31T12:00:00.123456Z","level":"INFO","message":"order transition",
//!  "order_id":"0190…","from":"pending","to":"awaiting_payment","request_id":"0190…",
//!  "method":"POST","route":"/api/v1/orders","module":"order","span":"place","target":"agora_order::domain::service"}
//! ```
//!
//! What it costs: a span renders its own fields once, when it is created, and
//! merges them with its parent's (sharing the parent's list when it adds
//! none); an event writes its fields and copies that pre-rendered list into a
//! per-thread buffer. Nothing is re-parsed, and no span list is walked, per
//! line.
//!
//! When this log is the only reader of events (no OpenTelemetry export, a
//! level filter that decides per call site), the gateway opens no
//! `http_request` span at all: it polls the request inside an [`InRequest`]
//! scope, and every line written meanwhile on that thread carries the
//! request's fields exactly where the span's would stand, with
//! `"span":"http_request"` when no inner span is open. A span costs its
//! creation, its fields rendered, its entries and its close (about 3k
//! instructions of a `/health/live` request, docs/performance.md); the
//! scope costs a thread-local swap per poll, and its fields are rendered
//! only by the lines that need them.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Keys of the line itself; a span field of that name is left out.
const RESERVED: [&str; 5] = ["timestamp", "level", "message", "span", "target"];

/// A span's fields and its ancestors', each value already rendered as JSON: a
/// span's own fields and a link to its parent's, so a child span copies none
/// of the request span's strings (a read's service span is one allocation).
#[derive(Clone, Default)]
struct SpanFields(Option<Arc<FieldsNode>>);

struct FieldsNode {
    outer: SpanFields,
    own: RenderFields,
}

/// The spans inside the one being rendered, innermost first: their fields
/// shadow its fields of the same name.
struct Inner<'a> {
    node: &'a FieldsNode,
    next: Option<&'a Inner<'a>>,
}

impl Inner<'_> {
    fn shadows(inner: Option<&Inner<'_>>, name: &str) -> bool {
        let mut at = inner;
        while let Some(i) = at {
            if i.node.own.fields.iter().any(|(n, _)| *n == name) {
                return true;
            }
            at = i.next;
        }
        false
    }
}

impl SpanFields {
    /// `self` with `own` added, replacing fields of the same name.
    fn with(&self, own: RenderFields) -> SpanFields {
        if own.fields.is_empty() {
            return self.clone();
        }
        SpanFields(Some(Arc::new(FieldsNode {
            outer: self.clone(),
            own,
        })))
    }

    /// Whether a span in the list has a field of this name.
    fn has(&self, name: &str) -> bool {
        let mut at = self.0.as_deref();
        while let Some(node) = at {
            if node.own.fields.iter().any(|(n, _)| *n == name) {
                return true;
            }
            at = node.outer.0.as_deref();
        }
        false
    }

    /// Each field once as its rendered `"name":value`, the innermost span's
    /// value winning, outermost first.
    fn for_each(&self, mut f: impl FnMut(&'static str, &str)) {
        fn visit(
            node: &FieldsNode,
            inner: Option<&Inner<'_>>,
            f: &mut impl FnMut(&'static str, &str),
        ) {
            if let Some(outer) = &node.outer.0 {
                visit(outer, Some(&Inner { node, next: inner }), f);
            }
            for (name, at) in &node.own.fields {
                if !Inner::shadows(inner, name) {
                    f(name, &node.own.text[at.clone()]);
                }
            }
        }
        if let Some(node) = &self.0 {
            visit(node, None, &mut f);
        }
    }
}

/// A `tracing` layer writing one JSON line per event to `make_writer`.
pub struct JsonLayer<W> {
    make_writer: W,
}

impl<W> JsonLayer<W> {
    pub fn new(make_writer: W) -> Self {
        Self { make_writer }
    }
}

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut own = RenderFields::default();
        attrs.record(&mut own);
        let inherited = span
            .parent()
            .and_then(|p| p.extensions().get::<SpanFields>().cloned())
            .unwrap_or_default();
        // A span with no fields of its own or of its ancestors' carries
        // nothing (a handler's span inside a request scope): no extension.
        if own.fields.is_empty() && inherited.0.is_none() {
            return;
        }
        let fields = inherited.with(own);
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut own = RenderFields::default();
        values.record(&mut own);
        if own.fields.is_empty() {
            return;
        }
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<SpanFields>() {
            Some(fields) => *fields = fields.with(own),
            None => extensions.insert(SpanFields::default().with(own)),
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        with_scratch(|scratch| self.write(scratch, event, &ctx));
    }
}

/// `f` with this thread's buffers.
fn with_scratch(f: impl FnOnce(&mut Scratch)) {
    thread_local! {
        static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    }
    let mut f = Some(f);
    let _ = SCRATCH.try_with(|scratch| {
        if let Ok(mut scratch) = scratch.try_borrow_mut()
            && let Some(f) = f.take()
        {
            f(&mut scratch);
        }
    });
    // Writing a line logged itself, or the thread is exiting: a fresh buffer.
    if let Some(f) = f {
        f(&mut Scratch::default());
    }
}

/// The fields of the request a worker thread is serving, the ones the
/// `http_request` span carries (see the module's docs).
pub struct RequestFields {
    pub request_id: String,
    pub method: actix_web::http::Method,
    pub route: std::rc::Rc<str>,
    pub module: std::rc::Rc<str>,
}

impl RequestFields {
    /// Name and value of each field, in the span's order.
    fn fields(&self) -> [(&'static str, &str); 4] {
        [
            ("request_id", &self.request_id),
            ("method", self.method.as_str()),
            ("route", &self.route),
            ("module", &self.module),
        ]
    }
}

thread_local! {
    /// The request this thread is polling, if any.
    static REQUEST: std::cell::Cell<Option<std::rc::Rc<RequestFields>>> =
        const { std::cell::Cell::new(None) };
}

fn current_request() -> Option<std::rc::Rc<RequestFields>> {
    REQUEST
        .try_with(|r| {
            let current = r.take();
            r.set(current.clone());
            current
        })
        .ok()
        .flatten()
}

/// `fields` is this thread's request until dropped; then the one before.
struct Entered(Option<std::rc::Rc<RequestFields>>);

impl Entered {
    fn enter(fields: &std::rc::Rc<RequestFields>) -> Self {
        Self(
            REQUEST
                .try_with(|r| r.replace(Some(fields.clone())))
                .ok()
                .flatten(),
        )
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let before = self.0.take();
        let _ = REQUEST.try_with(|r| r.set(before));
    }
}

/// A request's future polled with its fields as the thread's request, so the
/// lines it logs carry them (the `http_request` span's stand-in).
pub struct InRequest<F> {
    fields: std::rc::Rc<RequestFields>,
    inner: F,
}

impl<F> InRequest<F> {
    pub fn new(fields: std::rc::Rc<RequestFields>, inner: F) -> Self {
        Self { fields, inner }
    }
}

impl<F: std::future::Future + Unpin> std::future::Future for InRequest<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.get_mut();
        let _entered = Entered::enter(&this.fields);
        std::pin::Pin::new(&mut this.inner).poll(cx)
    }
}

/// `f` run with `fields` as the thread's request (a line logged outside the
/// request's future: the gateway's own).
pub fn in_request<T>(fields: &std::rc::Rc<RequestFields>, f: impl FnOnce() -> T) -> T {
    let _entered = Entered::enter(fields);
    f()
}

/// Whether access lines go straight to the JSON log, which is then the only
/// reader of events: the gateway opens no request span (see the module's
/// docs).
pub fn direct() -> bool {
    ACCESS_SINK.get().is_some()
}

/// The gateway's access line, the `request completed` event every request
/// ends with, written straight to the log: the same bytes [`JsonLayer`]
/// writes for that event in the request span (a test holds them equal),
/// without `tracing`'s event machinery. Going through it, the line's fields
/// were visited one by one through trait objects, their names escaped again
/// and checked against the span's, and the span's rendered fields copied
/// in: about 3.6k instructions of the 31.7k a `/health/live` request cost
/// (docs/performance.md). Installed by `telemetry::init` only when the JSON
/// log is the only reader of events (no OpenTelemetry export) and the level
/// filter decides per call site; otherwise the gateway logs the event.
pub struct AccessLine<'a> {
    pub level: tracing::Level,
    /// The event's target: the module that logs it.
    pub target: &'static str,
    pub status: u16,
    /// The request's latency in whole microseconds, written as milliseconds
    /// (`latency_ms`).
    pub latency_micros: u64,
    pub principal: &'a str,
    pub path: &'a str,
    /// The fields of the request span (`http_request`), as it was created.
    pub request_id: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub module: &'a str,
}

/// Where access lines go when they bypass `tracing`: the JSON log's writer.
type AccessSink = Box<dyn Fn(tracing::Level, &[u8]) + Send + Sync>;

static ACCESS_SINK: std::sync::OnceLock<AccessSink> = std::sync::OnceLock::new();

/// Write access lines straight to `sink` from now on (once per process).
pub fn write_access_lines_to(sink: impl Fn(tracing::Level, &[u8]) + Send + Sync + 'static) {
    let _ = ACCESS_SINK.set(Box::new(sink));
}

/// Write `line` to the access sink; false when none is installed (log the
/// event through `tracing` then). The caller checks the level is enabled.
pub fn write_access(line: &AccessLine<'_>) -> bool {
    let Some(sink) = ACCESS_SINK.get() else {
        return false;
    };
    with_scratch(|scratch| {
        render_access(scratch, line, SystemTime::now());
        sink(line.level, scratch.line.as_bytes());
    });
    true
}

/// `line` as [`JsonLayer::write`] renders its event, into `scratch.line`:
/// the keys are written as they are (none needs escaping), in the order the
/// layer writes them (the event's fields, the span's, `span`, `target`).
fn render_access(scratch: &mut Scratch, line: &AccessLine<'_>, now: SystemTime) {
    let out = &mut scratch.line;
    out.clear();
    out.push_str("{\"timestamp\":\"");
    scratch.second.push_timestamp(out, now);
    out.push_str("\",\"level\":\"");
    out.push_str(line.level.as_str());
    out.push_str("\",\"message\":\"request completed\",\"status\":");
    out.push_str(itoa::Buffer::new().format(line.status));
    out.push_str(",\"latency_ms\":");
    push_thousandths(out, line.latency_micros);
    for (key, value) in [
        (",\"principal\":", line.principal),
        (",\"path\":", line.path),
        (",\"request_id\":", line.request_id),
    ] {
        out.push_str(key);
        push_json_str(out, value);
    }
    // An HTTP method is a token (RFC 9110: no quote, backslash or control
    // character), and a Rust module path is identifiers and `::`: nothing
    // to escape in either.
    out.push_str(",\"method\":\"");
    out.push_str(line.method);
    out.push_str("\",\"route\":");
    push_json_str(out, line.route);
    out.push_str(",\"module\":");
    push_json_str(out, line.module);
    out.push_str(",\"span\":\"http_request\",\"target\":\"");
    out.push_str(line.target);
    out.push_str("\"}\n");
}

/// Per-thread buffers, reused from line to line.
#[derive(Default)]
struct Scratch {
    line: String,
    names: Vec<&'static str>,
    second: Second,
}

/// The timestamp's date and time of day, rendered once per second (per
/// thread): a line then adds only its microseconds.
#[derive(Default)]
struct Second {
    epoch_secs: Option<u64>,
    /// `2026-01-31T12:00:00`, as humantime's RFC 3339 writes it.
    text: String,
}

impl Second {
    /// `at` as RFC 3339 in UTC with microseconds (`2026-01-31T12:00:00.123456Z`,
    /// what `humantime::format_rfc3339_micros` writes).
    fn push_timestamp(&mut self, out: &mut String, at: SystemTime) {
        let since = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = since.as_secs();
        if self.epoch_secs != Some(secs) {
            self.text.clear();
            let whole = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            let _ = write!(self.text, "{}", humantime::format_rfc3339_seconds(whole));
            self.text.pop(); // its `Z`
            self.epoch_secs = Some(secs);
        }
        out.push_str(&self.text);
        let micros = since.subsec_micros();
        out.push('.');
        for place in [100_000, 10_000, 1_000, 100, 10, 1] {
            out.push(char::from(b'0' + (micros / place % 10) as u8));
        }
        out.push('Z');
    }
}

impl<W> JsonLayer<W>
where
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn write<S>(&self, scratch: &mut Scratch, event: &Event<'_>, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let Scratch {
            line,
            names,
            second,
        } = scratch;
        line.clear();
        names.clear();
        let meta = event.metadata();
        line.push_str("{\"timestamp\":\"");
        second.push_timestamp(line, SystemTime::now());
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push('"');
        let mut fields = WriteFields {
            line,
            names,
            log_target: None,
        };
        event.record(&mut fields);
        let WriteFields {
            line,
            names,
            log_target,
        } = fields;
        let span = ctx.event_span(event);
        let extensions = span.as_ref().map(|s| s.extensions());
        let inherited = extensions.as_ref().and_then(|e| e.get::<SpanFields>());
        // The request's fields stand where its span's would: outermost, each
        // unless the event or an inner span has one of that name.
        let request = current_request();
        if let Some(request) = &request {
            for (name, value) in request.fields() {
                if !names.contains(&name) && inherited.is_none_or(|f| !f.has(name)) {
                    line.push(',');
                    push_key(line, name);
                    push_json_str(line, value);
                }
            }
        }
        if let Some(inherited) = inherited {
            inherited.for_each(|name, rendered| {
                if !names.contains(&name) && !RESERVED.contains(&name) {
                    line.push(',');
                    line.push_str(rendered);
                }
            });
        }
        match &span {
            Some(span) => {
                line.push_str(",\"span\":");
                push_json_str(line, span.name());
            }
            None if request.is_some() => line.push_str(",\"span\":\"http_request\""),
            None => {}
        }
        line.push_str(",\"target\":");
        push_json_str(line, log_target.as_deref().unwrap_or(meta.target()));
        line.push_str("}\n");
        let _ = self
            .make_writer
            .make_writer_for(meta)
            .write_all(line.as_bytes());
    }
}

/// Renders a span's fields into one string, each as `"name":value` (JSON),
/// with where each one stands: one allocation for all of them, and a line
/// copies a field whole.
#[derive(Default)]
struct RenderFields {
    text: String,
    /// Inline for up to six fields (most spans have fewer): one allocation
    /// less per span.
    fields: smallvec::SmallVec<[(&'static str, Range<usize>); 6]>,
}

impl RenderFields {
    fn put(&mut self, field: &Field, render: impl FnOnce(&mut String)) {
        if self.text.capacity() == 0 {
            // A request span's four fields fit.
            self.text.reserve(160);
        }
        let name = field.name();
        let start = self.text.len();
        push_key(&mut self.text, name);
        render(&mut self.text);
        let at = start..self.text.len();
        // Recorded again (`Span::record`): the new value wins.
        match self.fields.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = at,
            None => self.fields.push((name, at)),
        }
    }
}

impl Visit for RenderFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, |t| push_json_str(t, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |t| t.push_str(itoa::Buffer::new().format(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |t| t.push_str(itoa::Buffer::new().format(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, |t| push_f64(t, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |t| t.push_str(if value { "true" } else { "false" }));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, |t| push_json_debug(t, value));
    }
}

/// Writes an event's fields straight into the line, remembering their names.
struct WriteFields<'a> {
    line: &'a mut String,
    names: &'a mut Vec<&'static str>,
    /// Events bridged from the `log` crate carry their target as a field.
    log_target: Option<String>,
}

impl WriteFields<'_> {
    /// Start `"name":`; false for the `log.*` fields of bridged `log` records.
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name.starts_with("log.") {
            return false;
        }
        self.names.push(name);
        self.line.push(',');
        push_key(self.line, name);
        true
    }
}

impl Visit for WriteFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.log_target = Some(value.to_owned());
        }
        if self.key(field) {
            push_json_str(self.line, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            self.line.push_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            self.line.push_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            push_f64(self.line, value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.line.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.key(field) {
            push_json_debug(self.line, value);
        }
    }
}

/// A finite number as JSON (ryu: the shortest text that reads back as the
/// same number, at a fraction of `fmt`'s cost; it may differ from `{value}`'s
/// text, as `1.0` for `1` or `1e21`); others as strings.
fn push_f64(out: &mut String, value: f64) {
    // Whole thousandths (`latency_ms`, whole microseconds in milliseconds),
    // the usual case: the digits straight, the same text ryu writes.
    if value.is_sign_positive() && value < 1e9 {
        let thousandths = (value * 1000.0).round();
        if thousandths / 1000.0 == value {
            push_thousandths(out, thousandths as u64);
            return;
        }
    }
    if value.is_finite() {
        out.push_str(ryu::Buffer::new().format_finite(value));
    } else {
        let _ = write!(out, "\"{value}\"");
    }
}

/// `t` thousandths as the shortest decimal that reads back as `t / 1000`
/// (`1.5` for 1500, `2.0` for 2000): what ryu writes for that number.
fn push_thousandths(out: &mut String, t: u64) {
    out.push_str(itoa::Buffer::new().format(t / 1000));
    let f = t % 1000;
    let digit = |d: u64| char::from(b'0' + d as u8);
    out.push('.');
    out.push(digit(f / 100));
    if !f.is_multiple_of(100) {
        out.push(digit(f / 10 % 10));
        if !f.is_multiple_of(10) {
            out.push(digit(f % 10));
        }
    }
}

/// `value`'s `Debug` text (for `%x` fields and messages, their `Display`) as
/// a JSON string, escaped as it is written.
fn push_json_debug(out: &mut String, value: &dyn std::fmt::Debug) {
    struct Escaping<'a>(&'a mut String);
    impl std::fmt::Write for Escaping<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            escape_into(self.0, s);
            Ok(())
        }
    }
    out.push('"');
    let _ = write!(Escaping(out), "{value:?}");
    out.push('"');
}

/// `s` as a JSON string.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    escape_into(out, s);
    out.push('"');
}

/// `"name":`, a field's key: names are identifiers (or literals, which
/// may need escaping), so one copy of the name between two pushes.
fn push_key(out: &mut String, name: &str) {
    if first_to_escape(name.as_bytes()) == name.len() {
        out.reserve(name.len() + 3);
        out.push('"');
        out.push_str(name);
        out.push_str("\":");
    } else {
        push_json_str(out, name);
        out.push(':');
    }
}

/// Whether any of these 8 bytes needs escaping in a JSON string: a control
/// character, `"` or `\\` (the usual "has zero byte" word tricks).
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero: its high bit set in `(x - ONES) & !x`.
    let has_byte = |b: u8| {
        let x = w ^ (ONES * u64::from(b));
        x.wrapping_sub(ONES) & !x
    };
    let below_0x20 = w.wrapping_sub(ONES * 0x20) & !w;
    (below_0x20 | has_byte(b'"') | has_byte(b'\\')) & HIGH != 0
}

fn escape_into(out: &mut String, s: &str) {
    // Most values (ids, routes, field names) need no escaping: find that out
    // eight bytes at a time and copy them whole, with one copy.
    let bytes = s.as_bytes();
    let mut clean = first_to_escape(bytes);
    if clean == bytes.len() {
        out.push_str(s);
        return;
    }
    // The word at `clean` holds a byte to escape: find it.
    while clean < bytes.len() && !needs_escape(bytes[clean]) {
        clean += 1;
    }
    // `clean` is at an ASCII byte, so on a character boundary.
    out.push_str(&s[..clean]);
    escape_slow(out, &s[clean..]);
}

/// The length of `bytes` when none needs escaping, else where the word
/// holding the first one starts. A string of eight bytes or more ends with a
/// word that overlaps the one before (its bytes were clean); a shorter one is
/// read as a few overlapping pieces, so no byte is looked at alone.
fn first_to_escape(bytes: &[u8]) -> usize {
    let len = bytes.len();
    let word_at = |at: usize| {
        let mut w = [0; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    if len < 8 {
        return if word_needs_escape(short_word(bytes)) {
            0
        } else {
            len
        };
    }
    let mut at = 0;
    while at + 8 <= len {
        if word_needs_escape(word_at(at)) {
            return at;
        }
        at += 8;
    }
    if at < len && word_needs_escape(word_at(len - 8)) {
        return len - 8;
    }
    len
}

/// Fewer than eight bytes as one word: every byte is in it at least once,
/// and the rest are spaces, which need no escaping.
fn short_word(b: &[u8]) -> u64 {
    const SPACES: u64 = 0x2020_2020_2020_2020;
    let len = b.len();
    match len {
        0 => SPACES,
        1..=3 => {
            let three = u64::from(b[0]) | u64::from(b[len / 2]) << 8 | u64::from(b[len - 1]) << 16;
            three | (SPACES & !0xFF_FFFF)
        }
        _ => {
            let mut lo = [0; 4];
            let mut hi = [0; 4];
            lo.copy_from_slice(&b[..4]);
            hi.copy_from_slice(&b[len - 4..]);
            u64::from(u32::from_le_bytes(lo)) | u64::from(u32::from_le_bytes(hi)) << 32
        }
    }
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

fn escape_slow(out: &mut String, s: &str) {
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escaped);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn numbers_read_as_ryu_writes_them() {
        let mut values: Vec<f64> = (0..5000u64).map(|us| us as f64 / 1000.0).collect();
        values.extend((0..2000u64).map(|us| (us * 7919 + 123_456_789) as f64 / 1000.0));
        values.extend([
            0.0,
            -0.0,
            1.0,
            0.1,
            2.5,
            1e-7,
            0.0004,
            123.4567,
            999_999_999.999,
            1e9,
            1e9 + 0.5,
            1e21,
            -3.25,
            f64::MIN_POSITIVE,
        ]);
        for v in values {
            let mut ours = String::new();
            push_f64(&mut ours, v);
            assert_eq!(ours, ryu::Buffer::new().format_finite(v), "{v:e}");
        }
        let mut nan = String::new();
        push_f64(&mut nan, f64::NAN);
        assert_eq!(nan, "\"NaN\"");
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Capture {
        type Writer = Capture;
        fn make_writer(&'w self) -> Capture {
            self.clone()
        }
    }

    /// The lines `f` logs, raw and parsed.
    fn lines(f: impl FnOnce()) -> Vec<(String, serde_json::Value)> {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(JsonLayer::new(capture.clone()));
        tracing::subscriber::with_default(subscriber, f);
        let bytes = capture.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| {
                let v = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                (l.to_owned(), v)
            })
            .collect()
    }

    #[test]
    fn a_line_deep_inside_a_request_carries_the_request_spans_fields() {
        let got = lines(|| {
            let request = tracing::info_span!("http_request", request_id = %"req-1", route = "/api/v1/orders");
            let _r = request.enter();
            let handler = tracing::info_span!("place");
            let _h = handler.enter();
            let step = tracing::info_span!("step", order_id = "o-1", attempt = 2_u64);
            let _s = step.enter();
            tracing::info!(
                from = "pending",
                to = "awaiting_payment",
                "order transition"
            );
        });
        assert_eq!(got.len(), 1);
        let v = &got[0].1;
        assert_eq!(v["message"], "order transition");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["route"], "/api/v1/orders");
        assert_eq!(v["order_id"], "o-1");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["from"], "pending");
        assert_eq!(v["span"], "step");
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(v["target"].as_str().is_some_and(|t| t.contains("json")));
    }

    #[test]
    fn the_event_wins_over_its_spans_and_each_name_appears_once() {
        let got = lines(|| {
            let outer = tracing::info_span!("outer", order_id = "outer", message = "not me");
            let _o = outer.enter();
            let inner = tracing::info_span!("inner", order_id = "inner");
            let _i = inner.enter();
            tracing::warn!(order_id = "event", "clash");
        });
        let (raw, v) = &got[0];
        assert_eq!(v["order_id"], "event");
        assert_eq!(v["message"], "clash");
        assert_eq!(raw.matches("\"order_id\"").count(), 1, "{raw}");
        assert_eq!(raw.matches("\"message\"").count(), 1, "{raw}");
    }

    #[test]
    fn an_inner_span_wins_over_its_ancestors_and_their_order_is_kept() {
        let got = lines(|| {
            let outer = tracing::info_span!("outer", request_id = "r", step = "outer");
            let _o = outer.enter();
            let middle = tracing::info_span!("middle", step = "middle", sku = "S-1");
            let _m = middle.enter();
            let inner = tracing::info_span!("inner", step = "inner");
            let _i = inner.enter();
            tracing::info!("deep");
        });
        let (raw, v) = &got[0];
        assert_eq!(v["step"], "inner");
        assert_eq!(v["request_id"], "r");
        assert_eq!(v["sku"], "S-1");
        assert_eq!(raw.matches("\"step\"").count(), 1, "{raw}");
        assert!(raw.find("\"request_id\"") < raw.find("\"sku\""), "{raw}");
    }

    #[test]
    fn an_explicit_parent_and_later_recorded_fields_count_too() {
        let got = lines(|| {
            let request = tracing::info_span!(
                "http_request",
                request_id = "req-2",
                status = tracing::field::Empty
            );
            request.record("status", 201_u64);
            tracing::info!(parent: &request, latency_ms = 1.5, "request completed");
            tracing::info!("outside any span");
        });
        assert_eq!(got[0].1["request_id"], "req-2");
        assert_eq!(got[0].1["status"], 201);
        assert_eq!(got[0].1["latency_ms"], 1.5);
        assert!(got[1].1.get("request_id").is_none());
        assert!(got[1].1.get("span").is_none());
    }

    /// A line without its timestamp's value, which differs from call to call.
    fn untimed(line: &str) -> String {
        let start = line.find("\"timestamp\":\"").map_or(0, |at| at + 13);
        let end = line[start..].find('"').map_or(start, |at| start + at);
        format!("{}{}", &line[..start], &line[end..])
    }

    #[test]
    fn the_direct_access_line_is_the_line_the_layer_writes_for_the_event() {
        for (status, latency_ms, principal, path) in [
            (200_u16, 0.25, "-", "/health/live"),
            (503, 1234.5, "cust-\"1\"", "/api/v1/orders/a\\b"),
        ] {
            let got = lines(|| {
                let span = request_span();
                if status >= 500 {
                    tracing::error!(parent: &span, message = "request completed", status, latency_ms, principal, path);
                } else {
                    tracing::info!(parent: &span, message = "request completed", status, latency_ms, principal, path);
                }
            });
            let mut scratch = Scratch::default();
            let line = AccessLine {
                level: if status >= 500 {
                    tracing::Level::ERROR
                } else {
                    tracing::Level::INFO
                },
                target: module_path!(),
                status,
                latency_micros: (latency_ms * 1000.0) as u64,
                principal,
                path,
                request_id: "r-\"1\"",
                method: "POST",
                route: "/api/v1/orders",
                module: "order",
            };
            render_access(&mut scratch, &line, SystemTime::now());
            assert_eq!(untimed(&scratch.line), untimed(&format!("{}\n", got[0].0)));
            let v: serde_json::Value = serde_json::from_str(&scratch.line).unwrap();
            assert_eq!(v["principal"], principal);
            assert_eq!(v["path"], path);
        }
    }

    /// The `http_request` span the gateway opens, with `request_fields`' values.
    fn request_span() -> tracing::Span {
        tracing::info_span!(
            "http_request",
            request_id = "r-\"1\"",
            method = "POST",
            route = "/api/v1/orders",
            module = "order",
        )
    }

    fn request_fields() -> std::rc::Rc<RequestFields> {
        std::rc::Rc::new(RequestFields {
            request_id: "r-\"1\"".to_owned(),
            method: actix_web::http::Method::POST,
            route: "/api/v1/orders".into(),
            module: "order".into(),
        })
    }

    /// The lines, each without its timestamp's value, one text.
    fn untimed_lines(got: &[(String, serde_json::Value)]) -> String {
        got.iter()
            .map(|(raw, _)| untimed(raw))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// What `log` writes inside the `http_request` span the gateway opens
    /// when the log is not alone.
    fn in_span(log: impl Fn()) -> String {
        let got = lines(|| {
            let span = request_span();
            let _entered = span.enter();
            log();
        });
        untimed_lines(&got)
    }

    /// What `log` writes in the request scope the gateway uses instead.
    fn in_scope(log: impl Fn()) -> String {
        untimed_lines(&lines(|| in_request(&request_fields(), log)))
    }

    #[test]
    fn a_line_in_the_request_scope_is_the_line_the_request_span_gives() {
        let shapes: [(&str, fn()); 4] = [
            ("a bare event", || {
                tracing::info!(status = 201_u64, "request completed")
            }),
            ("an event that names a request field", || {
                tracing::warn!(route = "mine", "clash")
            }),
            ("an event in an inner span", || {
                let step = tracing::info_span!("step", order_id = "o-1", attempt = 2_u64);
                let _s = step.enter();
                tracing::info!(to = "confirmed", "order transition");
            }),
            ("an inner span that names a request field", || {
                let outer = tracing::info_span!("place", customer = "alice");
                let _o = outer.enter();
                let inner = tracing::info_span!("remote", module = "payment");
                let _i = inner.enter();
                tracing::error!("deep");
            }),
        ];
        for (shape, log) in shapes {
            let (span, scope) = (in_span(log), in_scope(log));
            assert!(
                span.contains("\"request_id\":\"r-\\\"1\\\"\""),
                "{shape}: {span}"
            );
            assert_eq!(scope, span, "{shape}");
        }
    }

    #[test]
    fn a_request_polled_in_its_scope_logs_its_fields_and_nothing_after_it_does() {
        use futures_util::FutureExt as _;
        let got = lines(|| {
            let request = InRequest::new(
                request_fields(),
                Box::pin(async { tracing::info!("inside") }),
            );
            assert!(request.now_or_never().is_some());
            tracing::info!("after");
        });
        assert_eq!(got[0].1["request_id"], "r-\"1\"");
        assert_eq!(got[0].1["method"], "POST");
        assert_eq!(got[0].1["span"], "http_request");
        assert!(got[1].1.get("request_id").is_none(), "{}", got[1].0);
        assert!(got[1].1.get("span").is_none(), "{}", got[1].0);
    }

    #[test]
    fn strings_are_escaped_into_valid_json() {
        let got = lines(|| {
            let s = tracing::info_span!("s", note = "tab\there \"quoted\"");
            let _s = s.enter();
            tracing::error!(error = %"line 1\nline 2 \\ \u{1}", "it said \"no\"");
        });
        let v = &got[0].1;
        assert_eq!(v["message"], "it said \"no\"");
        assert_eq!(v["error"], "line 1\nline 2 \\ \u{1}");
        assert_eq!(v["note"], "tab\there \"quoted\"");
    }

    #[test]
    fn timestamps_read_as_humantime_writes_them() {
        let mut second = super::Second::default();
        let start =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        for micros in [
            0,
            1,
            999_999,
            123_456,
            1_000_000,
            1_000_001,
            86_400_000_000,
            59_999_999,
        ] {
            let at = start + std::time::Duration::from_micros(micros);
            let mut out = String::new();
            second.push_timestamp(&mut out, at);
            assert_eq!(out, humantime::format_rfc3339_micros(at).to_string());
        }
    }

    #[test]
    fn escaping_is_right_at_every_offset_of_the_word_scan() {
        // The scan reads eight bytes at a time: put each kind of character
        // that needs escaping (and a multi-byte one that does not) at every
        // offset of a few words, and check the result reads back unchanged.
        // Every length up to three words, so the padded last word is covered too.
        for special in ["\"", "\\", "\n", "\u{1f}", "\u{7f}", "é", "€", "😀"] {
            for len in 0..24 {
                for at in 0..=len {
                    let s = format!("{}{special}{}", "a".repeat(at), "b".repeat(len - at));
                    let mut out = String::new();
                    super::push_json_str(&mut out, &s);
                    let back: String = serde_json::from_str(&out)
                        .unwrap_or_else(|e| panic!("{out:?} is not a JSON string: {e}"));
                    assert_eq!(back, s, "at offset {at} of {len}");
                }
            }
        }
        for clean in ["", "a", "abcdefg", "abcdefgh", "abcdefghi"] {
            let mut out = String::new();
            super::push_json_str(&mut out, clean);
            assert_eq!(out, format!("\"{clean}\""));
        }
        let mut out = String::new();
        super::push_json_str(&mut out, "0123456789abcdef");
        assert_eq!(out, "\"0123456789abcdef\"");
    }
}
