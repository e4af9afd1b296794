//! An OTLP trace receiver for the tests: what an OpenTelemetry Collector would be to
//! Cloakroom. Listens on `127.0.0.1:0` for OTLP/HTTP (`POST /v1/traces`, protobuf) and OTLP/gRPC
//! (`TraceService/Export` over cleartext HTTP/2) on the same port, decodes every
//! `ExportTraceServiceRequest` with `opentelemetry-proto`'s messages and records each span
//! (name, kind, ids, attributes, status, its resource's `service.name`), the raw bodies (for
//! leak scans) and the request headers.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One exported span, as received.
#[derive(Debug, Clone)]
pub(crate) struct RecordedSpan {
    pub name: String,
    /// 1 internal, 2 server, 3 client (`SpanKind`).
    pub kind: i32,
    /// Hex, as in a `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent_span_id: String,
    /// Every attribute, its value as text.
    pub attributes: BTreeMap<String, String>,
    /// 0 unset, 1 ok, 2 error.
    pub status: i32,
    /// The resource's `service.name`.
    pub service: String,
}

impl RecordedSpan {
    pub(crate) fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<RecordedSpan>,
    /// Every body as received (protobuf, or gRPC frames), for scans.
    raw: Vec<u8>,
    /// The headers of every export request.
    headers: Vec<http::HeaderMap>,
    grpc_exports: usize,
    http_exports: usize,
}

pub(crate) struct OtlpReceiver {
    pub addr: SocketAddr,
    /// Served over TLS ([`OtlpReceiver::start_tls`]).
    tls: bool,
    state: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

impl OtlpReceiver {
    pub(crate) async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Over TLS with this acceptor (a collector on a private CA; ALPN h2 and http/1.1).
    pub(crate) async fn start_tls(acceptor: tokio_rustls::TlsAcceptor) -> Self {
        Self::start_with(Some(acceptor)).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let is_tls = tls.is_some();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(Received::default()));
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(s.clone(), req));
                    let serve = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = serve.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(a) => {
                            if let Ok(stream) = a.accept(stream).await {
                                let _ = serve.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            tls: is_tls,
            state,
            task,
        }
    }

    /// `http://127.0.0.1:<port>` (`https://` over TLS): the endpoint for either protocol.
    pub(crate) fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub(crate) fn spans(&self) -> Vec<RecordedSpan> {
        self.state.lock().expect("lock").spans.clone()
    }

    /// Every body received, as text (protobuf strings are plain UTF-8 in it).
    pub(crate) fn raw(&self) -> String {
        String::from_utf8_lossy(&self.state.lock().expect("lock").raw).into_owned()
    }

    pub(crate) fn headers(&self) -> Vec<http::HeaderMap> {
        self.state.lock().expect("lock").headers.clone()
    }

    /// (OTLP/HTTP, OTLP/gRPC) export requests so far.
    pub(crate) fn exports(&self) -> (usize, usize) {
        let r = self.state.lock().expect("lock");
        (r.http_exports, r.grpc_exports)
    }

    /// The spans once `done` holds of them, polling for at most 30 s.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&[RecordedSpan]) -> bool,
    ) -> Vec<RecordedSpan> {
        for _ in 0..600 {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let names: Vec<String> = self
            .spans()
            .iter()
            .map(|s| format!("{} {} <- {}", s.name, s.span_id, s.parent_span_id))
            .collect();
        panic!("never received {what}; got:\n{}", names.join("\n"))
    }
}

fn record(state: &Mutex<Received>, msg: &ExportTraceServiceRequest) {
    let mut r = state.lock().expect("lock");
    for rs in &msg.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                let mut attrs = attributes(&s.attributes);
                // Events and links are exported attributes too: keep them for the scans.
                for (i, e) in s.events.iter().enumerate() {
                    for (k, v) in attributes(&e.attributes) {
                        attrs.insert(format!("event[{i}].{k}"), v);
                    }
                }
                for (k, v) in &resource {
                    attrs.insert(format!("resource.{k}"), v.clone());
                }
                r.spans.push(RecordedSpan {
                    name: s.name.clone(),
                    kind: s.kind,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    attributes: attrs,
                    status: s.status.as_ref().map_or(0, |st| st.code),
                    service: service.clone(),
                });
            }
        }
    }
}

async fn handle(
    state: Arc<Mutex<Received>>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Body>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    {
        let mut r = state.lock().expect("lock");
        r.raw.extend_from_slice(&body);
        r.headers.push(headers);
    }
    match path.as_str() {
        "/v1/traces" => {
            let Ok(msg) = ExportTraceServiceRequest::decode(body) else {
                return Ok(answer(400, Full::new(Bytes::new()).boxed()));
            };
            record(&state, &msg);
            state.lock().expect("lock").http_exports += 1;
            let mut resp = answer(200, Full::new(Bytes::new()).boxed());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-protobuf"),
            );
            Ok(resp)
        }
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export" => {
            // gRPC framing: 1 byte "compressed" (0), 4 bytes length, the message.
            let mut rest = &body[..];
            while rest.len() >= 5 {
                let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                let Some(msg) = rest.get(5..5 + len) else {
                    break;
                };
                if let Ok(m) = ExportTraceServiceRequest::decode(msg) {
                    record(&state, &m);
                }
                rest = &rest[5 + len..];
            }
            state.lock().expect("lock").grpc_exports += 1;
            // An empty ExportTraceServiceResponse, then `grpc-status: 0` as a trailer.
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let frames = futures_util::stream::iter([
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(&[
                    0, 0, 0, 0, 0,
                ]))),
                Ok(Frame::trailers(trailers)),
            ]);
            let mut resp = answer(200, StreamBody::new(frames).boxed());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            Ok(resp)
        }
        _ => Ok(answer(404, Full::new(Bytes::new()).boxed())),
    }
}

fn answer(status: u16, body: Body) -> http::Response<Body> {
    let mut resp = http::Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(status).expect("status");
    resp
}
