//! The browser stand-in: never follows redirects, keeps one cookie jar for 127.0.0.1 (cookies
//! ignore ports, so the IdP's and ours share it), and records everything it received so tests
//! can prove no token ever reached it.

use std::collections::BTreeMap;

#[derive(Clone)]
pub(crate) struct Browser {
    client: reqwest::Client,
    pub jar: BTreeMap<String, String>,
    /// Every status line, header and body this browser received.
    pub received: String,
    /// Extra headers sent with every request to Cloakroom (e.g. Origin).
    pub user_agent: String,
}

pub(crate) struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Resp {
    pub(crate) fn location(&self) -> String {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no Location in a {} response: {}", self.status, self.body))
            .to_string()
    }
    pub(crate) fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(String::from))
            .collect()
    }
    pub(crate) fn set_cookie(&self, name: &str) -> Option<String> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
    }
    /// The `Set-Cookie` of a pending-login cookie (`__Host-cloakroom-login-<tag>`), if any.
    pub(crate) fn set_login_cookie(&self) -> Option<String> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with("__Host-cloakroom-login-"))
    }
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub(crate) fn new() -> Self {
        Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            jar: BTreeMap::new(),
            received: String::new(),
            user_agent: "cloakroom-test-browser".into(),
        }
    }

    /// The pending-login cookies in the jar: (name, value).
    pub(crate) fn login_cookies(&self) -> Vec<(String, String)> {
        self.jar
            .iter()
            .filter(|(k, _)| k.starts_with("__Host-cloakroom-login-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn cookie_header(&self) -> Option<String> {
        (!self.jar.is_empty()).then(|| {
            self.jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn absorb(&mut self, r: &Resp) {
        self.received.push_str(&format!("{}\n", r.status));
        for (k, v) in &r.headers {
            self.received
                .push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        self.received.push_str(&r.body);
        self.received.push('\n');
        for c in r.set_cookies() {
            let first = c.split(';').next().unwrap_or_default();
            let Some((name, value)) = first.split_once('=') else {
                continue;
            };
            let lower = c.to_ascii_lowercase();
            let deleted = lower.contains("max-age=0")
                || lower.contains("expires=thu, 01 jan 1970")
                || value.is_empty();
            if deleted {
                self.jar.remove(name.trim());
            } else {
                self.jar
                    .insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }

    pub(crate) async fn send(&mut self, req: reqwest::RequestBuilder) -> Resp {
        let mut req = req.header("user-agent", &self.user_agent);
        if let Some(c) = self.cookie_header() {
            req = req.header("cookie", c);
        }
        let resp = req.send().await.expect("request");
        let r = Resp {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap_or_default(),
        };
        self.absorb(&r);
        r
    }

    pub(crate) async fn get(&mut self, url: &str) -> Resp {
        let req = self.client.get(url);
        self.send(req).await
    }

    /// An XHR from the SPA: with the CSRF header.
    pub(crate) async fn xhr(&mut self, method: reqwest::Method, url: &str) -> Resp {
        let req = self.client.request(method, url).header("x-csrf", "1");
        self.send(req).await
    }

    pub(crate) async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> Resp {
        let req = self.client.post(url).form(form);
        self.send(req).await
    }

    pub(crate) fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.client.request(method, url)
    }
}
