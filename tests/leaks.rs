//! A real key sent where no key belongs — every path and query parameter
//! of every route (read from `/openapi.json`), every field of every JSON
//! body, other headers, the method — never comes back in an answer, never
//! reaches a log line (the server logging at `trace`), and is never stored.

use serde_json::{Value, json};

use crate::live::{Live, TOKEN, connect_from, request, request_on};
use crate::util::{Data, contains, files};

/// Path parameters' stand-ins when another parameter carries the key.
fn stand_in(name: &str, key_id: &str) -> String {
    match name {
        "id" => key_id.to_owned(),
        "tenant" => "acme".to_owned(),
        _ => "nobody".to_owned(),
    }
}

/// The body a route takes, with its required fields filled.
fn minimal_body(schema: &str) -> Value {
    match schema {
        "CreateKeyRequest" => json!({"name": "leak test"}),
        "AdminCreateKeyRequest" => json!({"user": "nobody", "name": "leak test"}),
        "VerifyRequest" => json!({"key": "klk_not_a_key"}),
        "CreateWebhookRequest" => {
            json!({"url": "http://127.0.0.1:9/leaks", "event_types": ["key.revoked"]})
        }
        _ => json!({}),
    }
}

/// The schema name a request body refers to, if any.
fn body_schema(op: &Value) -> Option<String> {
    fn find(v: &Value) -> Option<String> {
        match v {
            Value::Object(o) => o
                .get("$ref")
                .and_then(Value::as_str)
                .map(|r| r.rsplit('/').next().unwrap_or(r).to_owned())
                .or_else(|| o.values().find_map(find)),
            Value::Array(a) => a.iter().find_map(find),
            _ => None,
        }
    }
    find(op.get("requestBody")?)
}

struct Call {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

#[test]
fn a_key_in_any_wrong_field_is_never_answered_logged_or_stored() {
    let data = Data::new();
    let live = Live::start_with(&data.path(), 50, "trace", &[]);
    let operator = format!("Bearer {TOKEN}");
    let mint = |user: &str| {
        let r = request(
            &live.addr,
            "POST",
            "/v1/admin/tenants/acme/keys",
            &[("Authorization", &operator)],
            Some(&json!({"user": user, "name": "leaks",
                "scopes": ["keys:read", "keys:write", "audit:read", "usage:read", "users:remove",
                    "webhooks:manage"]})),
        )
        .expect("mint");
        assert_eq!(r.status, 201, "{}", r.text());
        let v = r.json();
        (
            v["key"].as_str().unwrap().to_owned(),
            v["id"].as_str().unwrap().to_owned(),
        )
    };
    // The secret that must not leak, and the caller's own credential.
    let (secret, victim) = mint("alice");
    let (credential, _) = mint("carol");
    let caller = format!("Bearer {credential}");
    let body_part = &secret[secret.find('_').unwrap() + 1..];
    let percent: String = secret.bytes().map(|b| format!("%{b:02X}")).collect();

    let doc = request(&live.addr, "GET", "/openapi.json", &[], None)
        .expect("/openapi.json")
        .json();
    let mut calls = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let security = op["security"].to_string();
            let auth = if security.contains("operator") && path.starts_with("/v1/admin") {
                Some(operator.clone())
            } else if security.contains("bearer") {
                Some(caller.clone())
            } else {
                None
            };
            let params: Vec<(String, String)> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            (
                                p["name"].as_str().unwrap().to_owned(),
                                p["in"].as_str().unwrap().to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let schema = body_schema(op);
            let base_body = schema.as_deref().map(minimal_body);
            let fill = |target: Option<&str>, value: &str| {
                let mut p = path.clone();
                let mut query = Vec::new();
                for (name, place) in &params {
                    let v = if Some(name.as_str()) == target {
                        value.to_owned()
                    } else {
                        stand_in(name, &victim)
                    };
                    match place.as_str() {
                        "path" => p = p.replace(&format!("{{{name}}}"), &v),
                        _ if Some(name.as_str()) == target => query.push(format!("{name}={v}")),
                        _ => {}
                    }
                }
                if !query.is_empty() {
                    p = format!("{p}?{}", query.join("&"));
                }
                p
            };
            let mut add = |path: String, headers: Vec<(String, String)>, body: Option<Value>| {
                let mut headers = headers;
                if let Some(a) = &auth {
                    headers.push(("Authorization".into(), a.clone()));
                }
                calls.push(Call {
                    method: method.to_uppercase(),
                    path,
                    headers,
                    body: body.map(|b| b.to_string()),
                });
            };
            // The key in each parameter, as sent and percent-encoded.
            for (name, _) in &params {
                add(fill(Some(name), &secret), vec![], base_body.clone());
                add(fill(Some(name), &percent), vec![], base_body.clone());
            }
            // The key in each field of the body (and its scopes list), and
            // as an unknown field's name.
            if let Some(schema) = &schema {
                let props = doc["components"]["schemas"][schema]["properties"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                for field in props.keys() {
                    if schema == "VerifyRequest" && field == "key" {
                        continue; // the one field that takes a key
                    }
                    let mut b = base_body.clone().unwrap();
                    b[field] = json!(secret);
                    add(fill(None, ""), vec![], Some(b.clone()));
                    b[field] = json!([secret]);
                    add(fill(None, ""), vec![], Some(b));
                }
                let mut b = base_body.clone().unwrap();
                b[&secret] = json!("x");
                add(fill(None, ""), vec![], Some(b));
            }
            // The key in headers that are not credentials.
            let headers = ["X-Request-Id", "User-Agent", "Accept", "Cookie", "X-Tenant"]
                .iter()
                .map(|h| (h.to_string(), secret.clone()))
                .collect();
            add(fill(None, ""), headers, base_body.clone());
        }
    }
    // A body with the key escaped, the key as a method, in an unknown route,
    // and the verify route's scope.
    let escaped: String = secret
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    calls.push(Call {
        method: "POST".into(),
        path: "/v1/keys".into(),
        headers: vec![("Authorization".into(), caller.clone())],
        body: Some(format!(r#"{{"name": "{escaped}"}}"#)),
    });
    calls.push(Call {
        method: secret.clone(),
        path: "/healthz".into(),
        headers: vec![],
        body: None,
    });
    calls.push(Call {
        method: "GET".into(),
        path: format!("/nowhere/{secret}?{secret}"),
        headers: vec![],
        body: None,
    });
    calls.push(Call {
        method: "POST".into(),
        path: "/v1/verify".into(),
        headers: vec![],
        body: Some(json!({"key": secret, "scope": secret}).to_string()),
    });
    // And once where it belongs, so the log has seen it presented.
    calls.push(Call {
        method: "POST".into(),
        path: "/v1/verify".into(),
        headers: vec![],
        body: Some(json!({"key": secret}).to_string()),
    });

    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for c in &calls {
        let headers: Vec<(&str, &str)> = c
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let conn = connect_from("127.0.0.1", &live.addr).expect("connect");
        let r = request_on(
            conn,
            &live.addr,
            &c.method,
            &c.path,
            &headers,
            c.body.as_deref(),
        )
        .unwrap_or_else(|e| panic!("{} {}: no answer: {e}", c.method, c.path));
        *statuses.entry(r.status).or_default() += 1;
        let text = r.text();
        assert!(
            r.status < 500,
            "{} {} {:?}: {} {text}",
            c.method,
            c.path,
            c.body,
            r.status
        );
        assert!(
            !text.contains(body_part),
            "{} {} {:?} answered the key: {text}",
            c.method,
            c.path,
            c.body
        );
    }
    println!(
        "{} requests with the key in the wrong place; statuses {statuses:?}",
        calls.len()
    );
    assert!(calls.len() > 100, "only {} requests", calls.len());

    // The server logged at trace all along: the key reached the log code,
    // masked, and never whole.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let logs = live.all_logs();
    live.stop();
    assert!(
        logs.lines().count() > calls.len(),
        "the server logged too little"
    );
    for line in logs.lines() {
        assert!(
            !line.contains(body_part),
            "a log line holds the key: {line}"
        );
    }
    assert!(
        logs.contains(&keyledger_core::secret::mask(&secret)),
        "no log line shows the key masked, so none was tested"
    );
    // Nothing stored holds it (a tenant, a user or a name made of the key).
    for f in files(&data.path()) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !contains(&bytes, body_part),
            "{} holds the key",
            f.display()
        );
    }
}
