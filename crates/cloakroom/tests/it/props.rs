//! Issue #7, property tests (proptest, stable) against the public API: cookie decoding and the
//! key ring, `return_to` validation, route matching and dot-segment refusal, config parsing,
//! the forwarding-header policy and the recognition of our cookie names in upstream
//! `Set-Cookie` (issue #11).
//!
//! Case counts are modest so the module runs in seconds; failures are not persisted to files.
//! A failing case is printed minimised: add it to the unit tests of the module it breaks.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cloakroom::config::{Config, Env};
use cloakroom::cookies;
use cloakroom::crypto::KeyRing;
use cloakroom::session::SessionId;
use http::header::{HeaderMap, HeaderValue, COOKIE};
use proptest::prelude::*;
use std::sync::OnceLock;

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const GOOD: &str = r#"
[server]
public_url = "https://app.example"
[oidc]
issuer = "https://idp.example"
client_id = "spa"
[[routes]]
prefix = "/api/"
upstream = "http://127.0.0.1:9000"
"#;

fn secrets() -> Env {
    let mut e = Env::new();
    e.insert("CLOAKROOM_OIDC_CLIENT_SECRET".into(), "s3cret".into());
    e.insert("CLOAKROOM_COOKIE_KEYS".into(), KeyRing::generate_entry(1));
    e
}

/// One valid config (and so one key ring) for the whole module.
fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| Config::from_toml(GOOD, &secrets()).unwrap_or_else(|e| panic!("{e}")))
}

fn ring() -> &'static KeyRing {
    &config().keys
}

fn cookie_headers(values: &[String]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.append(COOKIE, v);
        }
    }
    h
}

/// A cookie header that carries `value` under the session cookie's name between `noise`.
fn with_session_cookie(noise: &[(String, String)], at: usize, value: &str) -> String {
    let mut pairs: Vec<String> = noise.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let at = at.min(pairs.len());
    pairs.insert(at, format!("{}={value}", config().cookie.name));
    pairs.join("; ")
}

/// Cookie pairs a browser sends for other cookies of the site: visible ASCII (see
/// `non_ascii_sibling_cookie_does_not_hide_the_session_cookie` for the rest).
fn ascii_cookie_pair() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![
            Just("__Host-cloakroom".to_string()),
            Just("__Host-cloakroom-login".to_string()),
            "[A-Za-z0-9_-]{1,12}",
        ],
        prop_oneof!["[A-Za-z0-9_=-]{0,40}", "[ -~]{0,40}"],
    )
}

fn cookie_pair() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![
            Just("__Host-cloakroom".to_string()),
            Just("__Host-cloakroom-login".to_string()),
            "[A-Za-z0-9_-]{1,12}",
        ],
        prop_oneof!["[A-Za-z0-9_=-]{0,40}", "[ -~]{0,40}", any::<String>()],
    )
}

// ------------------------------------------------------------------ key ring and cookies

proptest! {
    #![proptest_config(cases(256))]

    /// Arbitrary text never panics `open_text` and never opens: only the ring's seals do.
    #[test]
    fn open_text_refuses_anything_the_ring_did_not_seal(
        aad in prop::collection::vec(any::<u8>(), 0..40),
        text in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{0,300}"],
        max in 0usize..600,
    ) {
        prop_assert_eq!(ring().open_text(&aad, &text, max), None);
    }

    /// Arbitrary bytes, including ones with our version and key id in front (so they reach
    /// AES-GCM), never open.
    #[test]
    fn open_refuses_arbitrary_envelopes(
        aad in prop::collection::vec(any::<u8>(), 0..40),
        body in prop::collection::vec(any::<u8>(), 0..200),
        framed in any::<bool>(),
    ) {
        let mut sealed = if framed { vec![1u8, 1u8] } else { Vec::new() };
        sealed.extend_from_slice(&body);
        prop_assert_eq!(ring().open(&aad, &sealed), None);
        let text = URL_SAFE_NO_PAD.encode(&sealed);
        prop_assert_eq!(ring().open_text(&aad, &text, usize::MAX), None);
    }

    /// A sealed value opens to its plaintext under its AAD, and under no other AAD; every
    /// single-bit change, every truncation and every changed character is refused.
    #[test]
    fn sealed_values_roundtrip_and_every_change_is_refused(
        aad in prop::collection::vec(any::<u8>(), 0..40),
        plaintext in prop::collection::vec(any::<u8>(), 0..100),
        bit in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        ch in any::<prop::sample::Index>(),
        replacement in "[A-Za-z0-9_-]",
    ) {
        let text = ring().seal_text(&aad, &plaintext);
        prop_assert_eq!(ring().open_text(&aad, &text, text.len()), Some(plaintext.clone()));
        prop_assert_eq!(ring().open_text(&aad, &text, text.len() - 1), None);
        let mut other = aad.clone();
        other.push(0);
        prop_assert_eq!(ring().open_text(&other, &text, text.len()), None);

        let raw = URL_SAFE_NO_PAD.decode(&text).expect("our own base64");
        let i = bit.index(raw.len() * 8);
        let mut flipped = raw.clone();
        flipped[i / 8] ^= 1 << (i % 8);
        prop_assert_eq!(ring().open(&aad, &flipped), None);
        prop_assert_eq!(ring().open(&aad, &raw[..cut.index(raw.len())]), None);

        let j = ch.index(text.len());
        let mut changed: Vec<char> = text.chars().collect();
        let r = replacement.chars().next().expect("one char");
        prop_assume!(changed[j] != r);
        changed[j] = r;
        let changed: String = changed.into_iter().collect();
        prop_assert_eq!(ring().open_text(&aad, &changed, changed.len()), None);
    }

    /// Arbitrary `Cookie` headers (any names, any values, several headers) never panic
    /// `cookies::session_id` and never yield a session.
    #[test]
    fn arbitrary_cookie_headers_never_yield_a_session(
        headers in prop::collection::vec(
            prop_oneof![
                any::<String>(),
                prop::collection::vec(cookie_pair(), 0..6)
                    .prop_map(|p| p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")),
            ],
            0..4,
        ),
        raw in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut h = cookie_headers(&headers);
        if let Ok(v) = HeaderValue::from_bytes(&raw) {
            h.append(COOKIE, v);
        }
        prop_assert!(cloakroom::cookies::Cookies::from_config(config()).session_id(&h).is_none());
        prop_assert!(!matches!(cloakroom::cookies::Cookies::from_config(config()).pending(&h, "some-state"), Ok(Some(_))));
    }

    /// A session cookie Cloakroom set is found among arbitrary other cookies (and garbage
    /// copies of itself) and yields exactly its session id. The same seal under another cookie
    /// name's AAD, or sealing a plaintext of the wrong length, yields nothing.
    #[test]
    fn a_set_session_cookie_roundtrips_among_noise_and_nothing_else_does(
        noise in prop::collection::vec(ascii_cookie_pair(), 0..6),
        at in 0usize..7,
        wrong_len in prop_oneof![0usize..32, 33usize..48],
    ) {
        let c = config();
        let id = SessionId::generate();
        let set = cloakroom::cookies::Cookies::from_config(c).set_session(&id);
        let set = set.to_str().expect("ascii Set-Cookie");
        let value = set
            .split(';')
            .next()
            .and_then(|p| p.split_once('='))
            .map(|(_, v)| v.to_string())
            .expect("name=value");
        prop_assert!(value.len() < cookies::MAX_SESSION_COOKIE, "{}", value.len());
        let h = cookie_headers(&[with_session_cookie(&noise, at, &value)]);
        prop_assume!(!h.is_empty());
        let got = cloakroom::cookies::Cookies::from_config(c).session_id(&h);
        // One session cookie or none (SPEC §1 [v2]): another value under our name among the
        // noise makes the credentials ambiguous, and nothing authenticates.
        let rival = noise.iter().any(|(k, v)| {
            *k == c.cookie.name && v.split(';').next().unwrap_or("").trim() != value
        });
        if rival {
            prop_assert!(got.is_none());
            prop_assert!(cloakroom::cookies::Cookies::from_config(c).ambiguous_session(&h));
        } else {
            prop_assert_eq!(got.as_ref().map(SessionId::expose), Some(id.expose()));
            prop_assert!(!cloakroom::cookies::Cookies::from_config(c).ambiguous_session(&h));
        }
        // The same cookie sent twice is still one value.
        let twice = cookie_headers(&[with_session_cookie(&[], 0, &value), with_session_cookie(&[], 0, &value)]);
        let again = cloakroom::cookies::Cookies::from_config(c).session_id(&twice);
        prop_assert_eq!(again.as_ref().map(SessionId::expose), Some(id.expose()));

        let raw = URL_SAFE_NO_PAD.decode(id.expose()).expect("base64url id");
        let wrong_aad = c.keys.seal_text(c.cookie.login_name.as_bytes(), &raw);
        let wrong_size = c.keys.seal_text(c.cookie.name.as_bytes(), &vec![7u8; wrong_len]);
        for bad in [wrong_aad, wrong_size] {
            let h = cookie_headers(&[with_session_cookie(&noise, at, &bad)]);
            prop_assert!(cloakroom::cookies::Cookies::from_config(c).session_id(&h).is_none());
        }
    }
}

/// A cookie of the site with a UTF-8 value (browsers send what `document.cookie` or a sibling
/// subdomain set, raw) must not hide the session cookie in the same `Cookie` header: otherwise
/// anyone who can set one such cookie for the domain logs the user out for as long as it lives
/// (cookie tossing that the `__Host-` prefix does not stop).
/// (`cookies::request_cookies` works on raw bytes, pair by pair, for this.)
#[test]
fn non_ascii_sibling_cookie_does_not_hide_the_session_cookie() {
    let c = config();
    let id = SessionId::generate();
    let set = cloakroom::cookies::Cookies::from_config(c).set_session(&id);
    let value = set
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .and_then(|p| p.split_once('='))
        .map(|(_, v)| v.to_string())
        .expect("name=value");
    let mut bytes = b"theme=".to_vec();
    bytes.extend_from_slice("café".as_bytes());
    bytes.extend_from_slice(format!("; {}={value}", c.cookie.name).as_bytes());
    let mut h = HeaderMap::new();
    h.insert(
        COOKIE,
        HeaderValue::from_bytes(&bytes).expect("obs-text is a valid header value"),
    );
    assert_eq!(
        cloakroom::cookies::Cookies::from_config(c)
            .session_id(&h)
            .as_ref()
            .map(SessionId::expose),
        Some(id.expose()),
        "a UTF-8 sibling cookie hid the session cookie"
    );
}

// ------------------------------------------------------------------ return_to

/// Characters that matter to URL parsers and browsers.
const RETURN_TO_CHARS: &[&str] = &[
    "/",
    "\\",
    ".",
    "..",
    ":",
    "@",
    "?",
    "#",
    "%",
    "%2f",
    "%5c",
    "%09",
    "%0a",
    "%00",
    "a",
    "z",
    "evil.example",
    "https:",
    "javascript:",
    " ",
    "\t",
    "\n",
    "\r",
    "\0",
    "\u{7f}",
    "\u{85}",
    "\u{2028}",
    "\u{feff}",
    "\u{3000}",
    "\u{ff0f}",
    "é",
    "&",
    "=",
    "~",
    "[",
    "]",
    "'",
    "\"",
];

fn return_to() -> impl Strategy<Value = String> {
    let pieces = prop::collection::vec(prop::sample::select(RETURN_TO_CHARS), 0..16)
        .prop_map(|v| v.concat());
    prop_oneof![
        any::<String>(),
        pieces.clone(),
        (
            prop::sample::select(
                &["/", "//", "/\\", "\\", "/./", "/%2f", " /", "/\t/", "https://"][..]
            ),
            pieces,
        )
            .prop_map(|(p, s)| format!("{p}{s}")),
    ]
}

proptest! {
    #![proptest_config(cases(1024))]

    /// No input panics `valid_return_to`. Every accepted value is a path with no control
    /// character or backslash, resolves against `https://app.example/` to that same origin
    /// (https, same host, no port, no credentials), and can be sent as a `Location` header
    /// (including with `?error=…` appended, as the callback does).
    #[test]
    fn accepted_return_to_stays_on_the_origin(r in return_to()) {
        if !cloakroom::auth::valid_return_to(&r) {
            return Ok(());
        }
        prop_assert!(r.starts_with('/') && !r.starts_with("//"), "{:?}", r);
        prop_assert!(!r.chars().any(|c| c.is_control() || c == '\\'), "{:?}", r);
        let base = url::Url::parse("https://app.example/").expect("base");
        let u = base.join(&r).expect("an accepted return_to resolves");
        prop_assert_eq!(u.scheme(), "https", "{:?}", r);
        prop_assert_eq!(u.host_str(), Some("app.example"), "{:?}", r);
        prop_assert_eq!(u.port(), None, "{:?}", r);
        prop_assert!(u.username().is_empty() && u.password().is_none(), "{:?}", r);
        prop_assert_eq!(u.origin(), base.origin(), "{:?}", r);
        prop_assert!(HeaderValue::from_str(&r).is_ok(), "{:?}", r);
        let with_error = format!("{r}?error=login_required");
        prop_assert!(HeaderValue::from_str(&with_error).is_ok(), "{:?}", with_error);
    }

    /// The SPEC's refusals, stated directly: not starting with `/`, starting with `//` or `/\`,
    /// or containing a control character or backslash is always refused.
    #[test]
    fn spec_refusals_of_return_to_hold(r in return_to()) {
        let must_refuse = !r.starts_with('/')
            || r.starts_with("//")
            || r.starts_with("/\\")
            || r.chars().any(|c| c.is_control() || c == '\\');
        if must_refuse {
            prop_assert!(!cloakroom::auth::valid_return_to(&r), "{:?}", r);
        }
    }
}

// ------------------------------------------------------------------ routes and dot segments

fn route_prefix() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(&["a", "b", "api", "/", "-", ".", "%", "v1"][..]),
        0..5,
    )
    .prop_map(|v| format!("/{}", v.concat()))
}

fn toml_routes(prefixes: &[String]) -> String {
    let mut text = String::from(
        "[server]\npublic_url = \"https://app.example\"\n[oidc]\nissuer = \"https://idp.example\"\nclient_id = \"spa\"\n",
    );
    for p in prefixes {
        text.push_str(&format!(
            "[[routes]]\nprefix = {}\nupstream = \"http://127.0.0.1:9000\"\n",
            toml::Value::String(p.clone())
        ));
    }
    text
}

/// A "normalising upstream" of the WHATWG kind: the URL parser removes dot segments, treats `\`
/// as `/` and `%2e` as `.` (one decoding, of dots only).
fn whatwg_normalised(path: &str) -> String {
    url::Url::parse(&format!("http://upstream.invalid{path}"))
        .map(|u| u.path().to_string())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A "normalising upstream" of the router kind: percent-decodes once, reads `\` as `/`, then
/// removes dot segments (RFC 3986 §5.2.4).
fn decoded_normalised(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(u8::try_from(h * 16 + l).unwrap_or(0));
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&out).replace('\\', "/");
    let mut segs: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    format!("/{}", segs.join("/"))
}

const PATH_PIECES: &[&str] = &[
    "a", "b", ".", "..", "/", "\\", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%25", "%", ";",
    "%3b", "2e", "x.y",
];

proptest! {
    #![proptest_config(cases(256))]

    /// For arbitrary route sets (through the real config parser, which sorts them) and
    /// arbitrary paths, `match_route` returns the longest prefix that the path starts with, and
    /// none when no prefix matches.
    #[test]
    fn match_route_picks_the_longest_matching_prefix(
        prefixes in prop::collection::btree_set(route_prefix(), 1..6),
        pick in any::<prop::sample::Index>(),
        suffix in "[a-z/.%-]{0,12}",
        arbitrary in any::<String>(),
        use_arbitrary in any::<bool>(),
    ) {
        let prefixes: Vec<String> = prefixes
            .into_iter()
            .filter(|p| !(p == "/auth" || p.starts_with("/auth/")))
            .collect();
        prop_assume!(!prefixes.is_empty());
        let c = Config::from_toml(&toml_routes(&prefixes), &secrets())
            .unwrap_or_else(|e| panic!("{e}"));
        let path = if use_arbitrary {
            arbitrary
        } else {
            format!("{}{suffix}", prefixes[pick.index(prefixes.len())])
        };
        let expected = prefixes
            .iter()
            .filter(|p| path.starts_with(p.as_str()))
            .max_by_key(|p| p.len());
        let got = cloakroom::proxy::match_route(&c.routes, &path).map(|r| &r.prefix);
        prop_assert_eq!(got, expected, "{:?} among {:?}", path, prefixes);
    }

    /// `has_dot_segment` never panics, and whatever it lets through stays under the route's
    /// prefix at an upstream that percent-decodes once and then normalises (`..`, `%2e`, `\`).
    #[test]
    fn paths_without_dot_segments_stay_under_the_prefix_when_normalised(
        pieces in prop::collection::vec(prop::sample::select(PATH_PIECES), 0..12),
        arbitrary in any::<String>(),
    ) {
        let _ = cloakroom::proxy::has_dot_segment(&arbitrary);
        let path = format!("/api/{}", pieces.concat());
        if cloakroom::proxy::has_dot_segment(&path) {
            return Ok(());
        }
        for (how, seen) in [
            ("WHATWG", whatwg_normalised(&path)),
            ("decoded once", decoded_normalised(&path)),
        ] {
            prop_assert!(
                seen.starts_with("/api/"),
                "{} escaped the prefix ({}): {}", path, how, seen
            );
        }
    }
}

// ------------------------------------------------------------------ config parsing

const KEYS: &[&str] = &[
    "listen",
    "public_url",
    "trusted_proxies",
    "auth_prefix",
    "header_read_timeout",
    "max_header_bytes",
    "max_connections",
    "shutdown_drain",
    "max_connections_per_ip",
    "http1_idle_timeout",
    "http2_idle_timeout",
    "http2_keep_alive_interval",
    "http2_keep_alive_timeout",
    "http2_max_concurrent_streams",
    "http2_max_header_list_size",
    "tunnel_idle_timeout",
    "issuer",
    "client_id",
    "scopes",
    "extra_auth_params",
    "client_auth_method",
    "post_logout_redirect_uri",
    "timeout",
    "clock_skew",
    "idle_timeout",
    "absolute_timeout",
    "refresh_skew",
    "name",
    "login_name",
    "persistent",
    "secure",
    "header",
    "allowed_origins",
    "kind",
    "url",
    "nodes",
    "sentinels",
    "master_name",
    "key_prefix",
    "connect_timeout",
    "pool_idle_timeout",
    "prefix",
    "upstream",
    "token",
    "strip_prefix",
    "format",
    "level",
    "client_secret",
    "bogus",
];

const SECTIONS: &[&str] = &[
    "[server]",
    "[admin]",
    "[oidc]",
    "[session]",
    "[cookie]",
    "[csrf]",
    "[store]",
    "[upstream]",
    "[log]",
    "[[routes]]",
    "[server.tls]",
    "[oidc.extra_auth_params]",
    "[nope]",
    "[[server]]",
    "[routes]",
];

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| toml::Value::String(s).to_string()),
        prop::sample::select(
            &[
                "\"30m\"",
                "\"0s\"",
                "\"1ns\"",
                "\"99999999999999h\"",
                "\"soon\"",
                "\"-1s\"",
                "\"https://app.example\"",
                "\"http://127.0.0.1:9000\"",
                "\"redis://x\"",
                "\"ftp://x\"",
                "\"/api/\"",
                "\"api\"",
                "\"__Host-x\"",
                "\"memory\"",
                "\"sentinel\"",
                "\"cluster\"",
                "\"none\"",
                "\"required\"",
                "\"json\"",
                "\"debug\"",
                "\"[{=/\"",
                "\"127.0.0.1:0\"",
                "\"0.0.0.0:99999\"",
                "\"x-csrf\"",
                "\"bad header\"",
                "true",
                "false",
                "0",
                "-1",
                "18446744073709551615",
                "9223372036854775807",
                "1.5",
                "[]",
                "[\"openid\"]",
                "[1, \"a\"]",
                "{}",
                "{ a = \"b\" }",
                "1979-05-27T07:32:00Z",
                "nan",
                "inf",
            ][..],
        )
        .prop_map(String::from),
        any::<i64>().prop_map(|i| i.to_string()),
    ]
}

fn toml_ish() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        3 => (prop::sample::select(KEYS), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => prop::sample::select(SECTIONS).prop_map(String::from),
        1 => "[ -~]{0,30}",
    ];
    prop_oneof![
        prop::collection::vec(line.clone(), 0..20).prop_map(|l| l.join("\n")),
        prop::collection::vec(line, 0..10).prop_map(|l| format!("{GOOD}\n{}", l.join("\n"))),
        any::<String>(),
    ]
}

/// Well-formed TOML (built as a table and serialised) with real and bogus sections and keys,
/// and values of every type.
fn toml_table_text() -> impl Strategy<Value = String> {
    let entry = (
        prop::sample::select(
            &[
                "server", "admin", "oidc", "session", "cookie", "csrf", "store", "upstream", "log",
            ][..],
        ),
        prop::sample::select(KEYS),
        toml_value(),
    );
    (prop::collection::vec(entry, 0..12), any::<bool>()).prop_map(|(entries, with_route)| {
        let mut root = toml::Table::new();
        for (section, key, value) in entries {
            let value = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value));
            if let toml::Value::Table(t) = root
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                t.insert(key.to_string(), value);
            }
        }
        if with_route {
            let mut r = toml::Table::new();
            r.insert("prefix".into(), toml::Value::String("/api/".into()));
            r.insert(
                "upstream".into(),
                toml::Value::String("http://127.0.0.1:9000".into()),
            );
            root.insert(
                "routes".into(),
                toml::Value::Array(vec![toml::Value::Table(r)]),
            );
        }
        toml::to_string(&root).unwrap_or_default()
    })
}

fn env_map() -> impl Strategy<Value = Env> {
    let name = prop_oneof![
        (
            prop::sample::select(
                &[
                    "SERVER", "ADMIN", "OIDC", "SESSION", "COOKIE", "CSRF", "STORE", "UPSTREAM",
                    "LOG", "NOPE", "ROUTES"
                ][..]
            ),
            prop::sample::select(KEYS),
        )
            .prop_map(|(s, k)| format!("CLOAKROOM_{s}_{}", k.to_ascii_uppercase())),
        Just("CLOAKROOM_PORT".to_string()),
        Just("CLOAKROOM_SERVICE_HOST".to_string()),
        Just("CLOAKROOM_CONFIG".to_string()),
        "CLOAKROOM_[A-Z_]{0,12}",
        "[A-Z_]{1,12}",
    ];
    let value = prop_oneof![any::<String>(), toml_value(), "[ -~]{0,20}",];
    let secret = prop_oneof![
        Just(None),
        Just(Some(KeyRing::generate_entry(1))),
        "[ -~]{0,60}".prop_map(Some),
        Just(Some(format!(
            "{},{}",
            KeyRing::generate_entry(2),
            KeyRing::generate_entry(2)
        ))),
    ];
    (
        prop::collection::btree_map(name, value, 0..6),
        secret,
        prop::option::of("[ -~]{0,30}"),
        prop::option::of("[ -~]{0,30}"),
        any::<bool>(),
    )
        .prop_map(|(mut env, keys, client_secret, admin, file)| {
            if let Some(k) = keys {
                env.insert("CLOAKROOM_COOKIE_KEYS".into(), k);
            }
            if let Some(s) = client_secret {
                env.insert("CLOAKROOM_OIDC_CLIENT_SECRET".into(), s);
            }
            if let Some(a) = admin {
                env.insert("CLOAKROOM_ADMIN_TOKEN".into(), a);
            }
            if file {
                env.insert(
                    "CLOAKROOM_ADMIN_TOKEN_FILE".into(),
                    "/nonexistent/cloakroom-props/admin-token".into(),
                );
            }
            env
        })
}

/// Properties every accepted configuration has.
fn check_accepted(c: &Config) -> Result<(), TestCaseError> {
    prop_assert!(c
        .routes
        .windows(2)
        .all(|w| w[0].prefix.len() >= w[1].prefix.len()));
    for r in &c.routes {
        prop_assert!(r.prefix.starts_with('/'), "{}", r.prefix);
        let under_auth = format!("{}/", c.server.auth_prefix);
        prop_assert!(
            r.prefix != c.server.auth_prefix && !r.prefix.starts_with(&under_auth),
            "{:?} overlaps {:?}",
            r.prefix,
            c.server.auth_prefix
        );
        prop_assert_eq!(r.upstream.scheme(), "http");
    }
    prop_assert!(c.cookie.secure || c.server.public_url.scheme() == "http");
    prop_assert!(c.cookie.name != c.cookie.login_name);
    prop_assert!(c
        .admin
        .token
        .as_ref()
        .is_none_or(|t| t.expose().len() >= 16));
    prop_assert!(!c.oidc.client_secret.expose().is_empty());
    prop_assert!(c.oidc.scopes.iter().any(|s| s == "openid"));
    prop_assert!(c.server.max_header_bytes >= 1024);
    prop_assert!(c.session.refresh_skew < c.session.absolute_timeout);
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    /// Arbitrary TOML-ish text with arbitrary environments never panics `Config::from_toml`;
    /// a refusal lists at least one problem and no empty one; an acceptance is valid.
    #[test]
    fn config_parsing_never_panics_and_lists_its_errors(text in toml_ish(), env in env_map()) {
        match Config::from_toml(&text, &env) {
            Ok(c) => check_accepted(&c)?,
            Err(e) => {
                prop_assert!(!e.0.is_empty(), "a refusal without a reason");
                prop_assert!(e.0.iter().all(|p| !p.trim().is_empty()), "{:?}", e.0);
            }
        }
    }

    /// Whatever else is wrong, an unknown `CLOAKROOM_*` setting, an unknown section and an
    /// unreadable `*_FILE` secret are each named in the error list.
    #[test]
    fn unknown_settings_and_unreadable_secret_files_are_named(
        text in toml_table_text(),
        env in env_map(),
        suffix in "[A-Z]{1,8}",
    ) {
        let mut env = env;
        let unknown = format!("CLOAKROOM_ZZUNKNOWN_{suffix}");
        env.insert(unknown.clone(), "1".into());
        env.remove("CLOAKROOM_ADMIN_TOKEN");
        env.insert(
            "CLOAKROOM_ADMIN_TOKEN_FILE".into(),
            "/nonexistent/cloakroom-props/admin-token".into(),
        );
        // First, so that no table above it can absorb it.
        let text = format!("[zzsection{}]\nx = 1\n{text}", suffix.to_ascii_lowercase());
        let errs = match Config::from_toml(&text, &env) {
            Ok(_) => return Err(TestCaseError::fail("accepted an unknown setting")),
            Err(e) => e.0.join("\n"),
        };
        prop_assume!(!errs.starts_with("config file:"));
        prop_assert!(errs.contains(&unknown), "{}", errs);
        prop_assert!(errs.contains(&format!("zzsection{}", suffix.to_ascii_lowercase())), "{}", errs);
        prop_assert!(errs.contains("CLOAKROOM_ADMIN_TOKEN_FILE"), "{}", errs);
    }

    /// A valid base with random environment overrides of real keys: accepted configs keep
    /// every invariant, refused ones name a problem.
    #[test]
    fn env_overrides_of_real_keys_keep_validation(
        overrides in prop::collection::btree_map(
            (
                prop::sample::select(&["SERVER", "OIDC", "SESSION", "COOKIE", "CSRF", "STORE", "UPSTREAM", "LOG"][..]),
                prop::sample::select(KEYS),
            ).prop_map(|(s, k)| format!("CLOAKROOM_{s}_{}", k.to_ascii_uppercase())),
            prop_oneof![toml_value(), "[ -~]{0,20}"],
            0..4,
        ),
    ) {
        let mut env = secrets();
        env.extend(overrides);
        match Config::from_toml(GOOD, &env) {
            Ok(c) => check_accepted(&c)?,
            Err(e) => prop_assert!(!e.0.is_empty()),
        }
    }
}

// ------------------------------------------------------------------ forwarded headers (issue #11)

const FORWARDING_TOML: &str = r#"
[server]
public_url = "https://app.example:8443"
trusted_proxies = ["10.0.0.1", "10.0.0.2", "::1"]
[oidc]
issuer = "https://idp.example"
client_id = "spa"
[[routes]]
prefix = "/api/"
upstream = "http://127.0.0.1:9000"
"#;

fn forwarding_config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        Config::from_toml(FORWARDING_TOML, &secrets()).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// A header name: a forwarding header or a harmless one, in any letter case.
fn forwarding_name() -> impl Strategy<Value = String> {
    let names: Vec<&'static str> = cloakroom::proxy::REMOVED_FORWARDING
        .iter()
        .copied()
        .chain(["x-keep", "accept", "x-forwarded", "x-request-thing"])
        .collect();
    (proptest::sample::select(names), any::<u64>()).prop_map(|(n, bits)| {
        n.chars()
            .enumerate()
            .map(|(i, c)| {
                if bits >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    })
}

/// A header value: address lists, arbitrary visible ASCII, or bytes that are not visible ASCII.
fn forwarding_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[0-9., :a-f]{0,40}".prop_map(String::into_bytes),
        "[ -~]{0,40}".prop_map(String::into_bytes),
        proptest::collection::vec(prop_oneof![32u8..127, 128u8..=255], 0..20),
    ]
}

fn peer() -> impl Strategy<Value = std::net::SocketAddr> {
    let ip = prop_oneof![
        Just("10.0.0.1".parse::<std::net::IpAddr>().expect("ip")),
        Just("10.0.0.2".parse().expect("ip")),
        Just("::1".parse().expect("ip")),
        any::<[u8; 4]>().prop_map(std::net::IpAddr::from),
        any::<[u8; 16]>().prop_map(std::net::IpAddr::from),
    ];
    (ip, any::<u16>()).prop_map(|(ip, port)| std::net::SocketAddr::new(ip, port))
}

proptest! {
    #![proptest_config(cases(512))]

    /// Whatever forwarding headers a client sends and whoever the peer is, the upstream sees
    /// exactly the policy of SPEC §2: `X-Forwarded-Host`/`-Proto` from `public_url`, once;
    /// `X-Forwarded-For` the client's chain plus the peer for a trusted peer, else the peer
    /// alone, once; no other forwarding header; every other header untouched.
    #[test]
    fn the_upstream_sees_exactly_the_forwarding_policy(
        sent in proptest::collection::vec((forwarding_name(), forwarding_value()), 0..12),
        peer in peer(),
    ) {
        let c = forwarding_config();
        let mut headers = HeaderMap::new();
        for (n, v) in &sent {
            let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_bytes(v)) else {
                continue;
            };
            headers.append(n, v);
        }
        let before = headers.clone();
        cloakroom::proxy::ForwardedPolicy::new(&c.server).apply(&mut headers, peer);

        let one = |name: &str| -> Result<String, TestCaseError> {
            let all: Vec<_> = headers.get_all(name).iter().collect();
            prop_assert_eq!(all.len(), 1, "{} once", name);
            Ok(all[0].to_str().unwrap_or("<binary>").to_string())
        };
        prop_assert_eq!(one("x-forwarded-host")?, "app.example:8443");
        prop_assert_eq!(one("x-forwarded-proto")?, "https");
        let trusted = c.server.trusted_proxies.contains(&peer.ip());
        let chain: Vec<&str> = before
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        let expected = if trusted && !chain.is_empty() {
            format!("{}, {}", chain.join(", "), peer.ip())
        } else {
            peer.ip().to_string()
        };
        prop_assert_eq!(one("x-forwarded-for")?, expected);
        for name in cloakroom::proxy::REMOVED_FORWARDING {
            if !matches!(name, "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto") {
                prop_assert!(headers.get(name).is_none(), "{} reached the upstream", name);
            }
        }
        for (name, _) in &before {
            if cloakroom::proxy::REMOVED_FORWARDING.contains(&name.as_str()) {
                continue;
            }
            let a: Vec<_> = before.get_all(name).iter().collect();
            let b: Vec<_> = headers.get_all(name).iter().collect();
            prop_assert_eq!(a, b, "{} changed", name);
        }
    }
}

// ------------------------------------------------------------------ upstream Set-Cookie (issue #11)

/// `s` with the letter case of each character chosen by `bits`.
fn recase(s: &str, bits: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if bits >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(cases(512))]

    /// Every spelling of our cookie names that a browser would store under our name (any
    /// prefix variant, any case, whitespace around the name, any attributes, any login tag) is
    /// recognised, so an upstream cannot set or clear our cookies with it.
    #[test]
    fn every_variant_of_our_cookie_names_is_recognised(
        prefix in prop_oneof![Just(""), Just("__Host-"), Just("__Secure-")],
        login in any::<bool>(),
        tag in prop_oneof![Just(String::new()), "[A-Za-z0-9_.-]{1,16}".prop_map(|t| format!("-{t}"))],
        bits in any::<u64>(),
        pad in "[ \t]{0,2}",
        value in "[!-~&&[^;]]{0,30}",
        attrs in "(; [A-Za-z-]{1,10}(=[ -:<-~]{0,10})?){0,3}",
    ) {
        let ours = cloakroom::proxy::OurCookies::new(&config().cookie);
        let base = if login { "cloakroom-login" } else { "cloakroom" };
        let tag = if login { tag } else { String::new() };
        let name = recase(&format!("{prefix}{base}{tag}"), bits);
        let header = format!("{pad}{name}{pad}={value}{attrs}");
        prop_assert_eq!(
            ours.names(header.as_bytes()),
            Some(if login { "login" } else { "session" }),
            "{}", header
        );
    }

    /// A cookie that is not ours under any spelling passes.
    #[test]
    fn other_cookie_names_pass(name in "[A-Za-z0-9_.-]{1,24}", value in "[!-~&&[^;]]{0,20}") {
        let ours = cloakroom::proxy::OurCookies::new(&config().cookie);
        let lower = name.to_ascii_lowercase();
        let base = lower
            .strip_prefix("__host-")
            .or_else(|| lower.strip_prefix("__secure-"))
            .unwrap_or(&lower);
        let is_ours = base == "cloakroom"
            || base == "cloakroom-login"
            || (base.starts_with("cloakroom-login-") && base.len() > "cloakroom-login-".len());
        prop_assume!(!is_ours);
        let header = format!("{name}={value}; Path=/");
        prop_assert_eq!(ours.names(header.as_bytes()), None, "{}", header);
    }
}
