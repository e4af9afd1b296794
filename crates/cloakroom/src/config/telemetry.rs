//! `[telemetry]`: OpenTelemetry traces (`src/trace.rs`), exported over OTLP. Off unless
//! `otlp_endpoint` is set. The collector's headers (an API key, say) are a secret:
//! `CLOAKROOM_OTLP_HEADERS` (or `_FILE`), never the file.

use super::{Problems, Secret};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use url::Url;

/// The environment variable with the collector's headers: `name=value` pairs separated by
/// commas, values percent-encoded where needed (the format of `OTEL_EXPORTER_OTLP_HEADERS`).
pub const OTLP_HEADERS_VAR: &str = "CLOAKROOM_OTLP_HEADERS";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTelemetry {
    otlp_endpoint: Option<String>,
    protocol: Option<String>,
    sample_ratio: Option<f64>,
    trust_incoming_trace: Option<bool>,
    service_name: Option<String>,
    resource_attributes: BTreeMap<String, String>,
    #[serde(with = "humantime_serde")]
    export_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    batch_delay: Option<Duration>,
    max_queue: Option<usize>,
    tls_ca_file: Option<String>,
    /// Refused: the headers are a secret ([`OTLP_HEADERS_VAR`]).
    otlp_headers: Option<toml::Value>,
}

/// How spans reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies (`POST <endpoint>/v1/traces`; collectors listen on 4318).
    HttpProtobuf,
    /// OTLP/gRPC (collectors listen on 4317).
    Grpc,
}

/// `[telemetry]`, validated.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Where spans are exported; `None` (the default) turns tracing off.
    pub otlp_endpoint: Option<Url>,
    /// `http/protobuf` (default) or `grpc`.
    pub protocol: OtlpProtocol,
    /// The share of new traces recorded, 0 to 1 (default 1). A trace begun by a trusted caller
    /// keeps that caller's decision (its `sampled` flag).
    pub sample_ratio: f64,
    /// Whether a browser's `traceparent`/`tracestate` is believed (default false: the request
    /// starts a new trace, and those headers are not forwarded).
    pub trust_incoming_trace: bool,
    /// `service.name` of the exported spans (default `cloakroom`).
    pub service_name: String,
    /// More resource attributes (e.g. `deployment.environment.name`).
    pub resource_attributes: BTreeMap<String, String>,
    /// One export's time limit (default 10 s).
    pub export_timeout: Duration,
    /// How long a finished span waits at most before it is exported (default 5 s).
    pub batch_delay: Duration,
    /// Finished spans held for export at most; more are dropped (default 2048).
    pub max_queue: usize,
    /// The collector's headers ([`OTLP_HEADERS_VAR`]), names lower-case.
    pub headers: Vec<(String, Secret)>,
    /// `tls_ca_file`: extra CA certificates (PEM) trusted for an `https://` collector, besides
    /// the WebPKI roots (a collector on a private CA).
    pub tls_ca: Option<Vec<u8>>,
}

impl TelemetryConfig {
    /// Whether spans are exported.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.otlp_endpoint.is_some()
    }

    /// The URL spans are sent to: for OTLP/HTTP an endpoint without a path gets the standard
    /// `/v1/traces`; one with a path is used as given.
    #[must_use]
    pub fn export_url(&self) -> Option<String> {
        let url = self.otlp_endpoint.as_ref()?;
        Some(match self.protocol {
            OtlpProtocol::HttpProtobuf if url.path() == "/" => {
                format!("{}v1/traces", url.as_str())
            }
            _ => url.as_str().trim_end_matches('/').to_string(),
        })
    }

    pub(super) fn build(raw: RawTelemetry, headers: Option<Secret>, errs: &mut Problems) -> Self {
        if raw.otlp_headers.is_some() {
            errs.push(format!(
                "telemetry.otlp_headers: a secret; set {OTLP_HEADERS_VAR} (or {OTLP_HEADERS_VAR}_FILE) instead"
            ));
        }
        let otlp_endpoint = raw.otlp_endpoint.filter(|s| !s.trim().is_empty()).and_then(|s| {
            let u = super::http_url("telemetry.otlp_endpoint", s.trim(), errs)?;
            if u.query().is_some() || !u.username().is_empty() || u.password().is_some() {
                errs.push(
                    "telemetry.otlp_endpoint: no query or credentials in the URL (put the collector's credentials in CLOAKROOM_OTLP_HEADERS)"
                        .into(),
                );
                return None;
            }
            Some(u)
        });
        let protocol = match raw.protocol.as_deref().unwrap_or("http/protobuf") {
            "http/protobuf" | "http" => OtlpProtocol::HttpProtobuf,
            "grpc" => OtlpProtocol::Grpc,
            o => {
                errs.push(format!(
                    "telemetry.protocol: `{o}` must be http/protobuf or grpc"
                ));
                OtlpProtocol::HttpProtobuf
            }
        };
        let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            errs.push(format!(
                "telemetry.sample_ratio: {sample_ratio} must be from 0 to 1"
            ));
        }
        let service_name = raw.service_name.unwrap_or_else(|| "cloakroom".into());
        if service_name.trim().is_empty() {
            errs.push("telemetry.service_name: must not be empty".into());
        }
        for k in raw.resource_attributes.keys() {
            if k.trim().is_empty() || k == "service.name" {
                errs.push(format!(
                    "telemetry.resource_attributes: `{k}` is not allowed (service.name is telemetry.service_name)"
                ));
            }
        }
        let bounded = |key: &str, v: Option<Duration>, default: u64, errs: &mut Problems| {
            let d = v.unwrap_or(Duration::from_millis(default));
            if d < Duration::from_millis(10) || d > Duration::from_secs(300) {
                errs.push(format!("telemetry.{key}: must be from 10ms to 5m"));
            }
            d
        };
        let export_timeout = bounded("export_timeout", raw.export_timeout, 10_000, errs);
        let batch_delay = bounded("batch_delay", raw.batch_delay, 5_000, errs);
        let max_queue = raw.max_queue.unwrap_or(2048);
        if !(1..=1_000_000).contains(&max_queue) {
            errs.push(format!(
                "telemetry.max_queue: {max_queue} must be from 1 to 1000000"
            ));
        }
        let headers = headers.map_or_else(Vec::new, |h| parse_headers(h.expose(), errs));
        let tls_ca = raw
            .tls_ca_file
            .as_deref()
            .and_then(|path| match std::fs::read(path) {
                Ok(pem)
                    if reqwest::Certificate::from_pem_bundle(&pem).is_ok_and(|c| !c.is_empty()) =>
                {
                    Some(pem)
                }
                Ok(_) => {
                    errs.push(format!(
                        "telemetry.tls_ca_file: {path} holds no PEM certificate"
                    ));
                    None
                }
                Err(e) => {
                    errs.push(format!("telemetry.tls_ca_file: cannot read {path}: {e}"));
                    None
                }
            });
        Self {
            tls_ca,
            otlp_endpoint,
            protocol,
            sample_ratio,
            trust_incoming_trace: raw.trust_incoming_trace.unwrap_or(false),
            service_name,
            resource_attributes: raw.resource_attributes,
            export_timeout,
            batch_delay,
            max_queue,
            headers,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self::build(RawTelemetry::default(), None, &mut Vec::new())
    }
}

/// `name=value,name=value` (values percent-decoded). A problem names the variable and the
/// pair's position, never a value.
fn parse_headers(text: &str, errs: &mut Problems) -> Vec<(String, Secret)> {
    let mut out = Vec::new();
    for (i, pair) in text.split(',').enumerate() {
        if pair.trim().is_empty() {
            continue;
        }
        let Some((name, value)) = pair.split_once('=') else {
            errs.push(format!(
                "{OTLP_HEADERS_VAR}: entry {} is not name=value",
                i + 1
            ));
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .map(|v| v.into_owned());
        match (http::HeaderName::from_bytes(name.as_bytes()), value) {
            (Ok(_), Ok(v)) if http::HeaderValue::from_str(&v).is_ok() => {
                out.push((name, Secret::new(v)));
            }
            (Err(_), _) => errs.push(format!(
                "{OTLP_HEADERS_VAR}: entry {} has an invalid header name",
                i + 1
            )),
            _ => errs.push(format!(
                "{OTLP_HEADERS_VAR}: entry {} (`{name}`) has an invalid header value",
                i + 1
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml_text: &str, headers: Option<&str>) -> (TelemetryConfig, Vec<String>) {
        let raw: RawTelemetry = toml::from_str(toml_text).expect("toml");
        let mut errs = Vec::new();
        let c = TelemetryConfig::build(raw, headers.map(Secret::new), &mut errs);
        (c, errs)
    }

    #[test]
    fn off_by_default_with_the_documented_defaults() {
        let (c, errs) = build("", None);
        assert!(errs.is_empty(), "{errs:?}");
        assert!(!c.enabled());
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
        assert!((c.sample_ratio - 1.0).abs() < f64::EPSILON);
        assert!(!c.trust_incoming_trace);
        assert_eq!(c.service_name, "cloakroom");
        assert_eq!(c.export_timeout, Duration::from_secs(10));
        assert_eq!(c.batch_delay, Duration::from_secs(5));
        assert_eq!(c.max_queue, 2048);
        assert_eq!(c.export_url(), None);
    }

    #[test]
    fn the_export_url_follows_the_otlp_conventions() {
        let (c, errs) = build("otlp_endpoint = \"http://collector:4318\"", None);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            c.export_url().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        let (c, _) = build("otlp_endpoint = \"https://c.example/otlp/v1/traces\"", None);
        assert_eq!(
            c.export_url().as_deref(),
            Some("https://c.example/otlp/v1/traces")
        );
        let (c, errs) = build(
            "otlp_endpoint = \"http://collector:4317\"\nprotocol = \"grpc\"",
            None,
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(c.export_url().as_deref(), Some("http://collector:4317"));
    }

    #[test]
    fn every_problem_names_its_key_and_no_header_value_is_echoed() {
        let (_, errs) = build(
            r#"
            otlp_endpoint = "ftp://x"
            protocol = "thrift"
            sample_ratio = 1.5
            service_name = " "
            export_timeout = "0s"
            batch_delay = "1h"
            max_queue = 0
            otlp_headers = "x"
            [resource_attributes]
            "service.name" = "other"
            "#,
            Some("authorization=Bearer%20sekrit-value,broken,x-ok=\u{7f}sekrit2"),
        );
        let all = errs.join("\n");
        for key in [
            "telemetry.otlp_endpoint",
            "telemetry.protocol",
            "telemetry.sample_ratio",
            "telemetry.service_name",
            "telemetry.export_timeout",
            "telemetry.batch_delay",
            "telemetry.max_queue",
            "telemetry.otlp_headers",
            "telemetry.resource_attributes",
            "CLOAKROOM_OTLP_HEADERS: entry 2",
            "CLOAKROOM_OTLP_HEADERS: entry 3",
        ] {
            assert!(all.contains(key), "missing {key} in:\n{all}");
        }
        assert!(!all.contains("sekrit"), "{all}");
        let (_, errs) = build("otlp_endpoint = \"http://u:p@c:4318/?k=v\"", None);
        assert!(
            errs.join("\n").contains("telemetry.otlp_endpoint"),
            "{errs:?}"
        );
    }

    #[test]
    fn the_section_comes_from_the_file_and_the_environment() {
        let text = r#"
            [server]
            public_url = "https://app.example.com"
            [oidc]
            issuer = "https://idp.example.com"
            client_id = "spa"
            [telemetry]
            sample_ratio = 0.5
            trust_incoming_trace = true
        "#;
        let mut env = super::super::Env::new();
        env.insert("CLOAKROOM_OIDC_CLIENT_SECRET".into(), "s".into());
        env.insert(
            "CLOAKROOM_COOKIE_KEYS".into(),
            crate::crypto::KeyRing::generate_entry(1),
        );
        env.insert(
            "CLOAKROOM_TELEMETRY_OTLP_ENDPOINT".into(),
            "http://collector:4317".into(),
        );
        env.insert("CLOAKROOM_TELEMETRY_PROTOCOL".into(), "grpc".into());
        env.insert(OTLP_HEADERS_VAR.into(), "x-key=v".into());
        let c = super::super::Config::from_toml(text, &env).unwrap_or_else(|e| panic!("{e}"));
        let t = &c.telemetry;
        assert!(t.enabled() && t.trust_incoming_trace);
        assert_eq!(t.protocol, OtlpProtocol::Grpc);
        assert!((t.sample_ratio - 0.5).abs() < f64::EPSILON);
        assert_eq!(t.headers.len(), 1);
        // Off without the endpoint; the other keys keep their defaults.
        let c = super::super::Config::from_toml(
            text.replace("[telemetry]", "[reload]\n[telemetry]")
                .as_str(),
            &{
                let mut e = env.clone();
                e.remove("CLOAKROOM_TELEMETRY_OTLP_ENDPOINT");
                e
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.telemetry.enabled());
    }

    #[test]
    fn headers_are_read_decoded_and_kept_out_of_debug() {
        let (c, errs) = build(
            "otlp_endpoint = \"http://c:4318\"",
            Some("X-Api-Key=abc%3D%3D, x-tenant = t1"),
        );
        assert!(errs.is_empty(), "{errs:?}");
        let names: Vec<_> = c
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.expose()))
            .collect();
        assert_eq!(names, [("x-api-key", "abc=="), ("x-tenant", "t1")]);
        assert!(!format!("{c:?}").contains("abc"));
    }
}
