//! The operator token on the tenant routes (docs/api.md, "Who may call
//! what"): it acts in the tenant named by `Keyledger-Tenant`, as the
//! operator or as the user named by `Keyledger-Act-As`, and the trail says
//! which; an API key never crosses into another tenant with those headers.

use serde_json::{Value, json};

use super::{Options, Server, TOKEN};
use crate::util::Data;

const ALL: [&str; 5] = [
    "keys:read",
    "keys:write",
    "audit:read",
    "usage:read",
    "users:remove",
];

fn names(list: &Value) -> Vec<String> {
    let mut n: Vec<String> = list["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("a key list: {list}"))
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect();
    n.sort();
    n
}

#[test]
fn the_operator_token_acts_on_tenant_routes_in_the_tenant_its_header_names() {
    let d = Data::new();
    let s = Server::start(&d, Options::default());
    let alice = s.mint(
        "acme",
        json!({"user": "alice", "name": "acme-alice", "scopes": ALL}),
    );
    let alice_id = alice["id"].as_str().unwrap().to_owned();
    let globex = s.mint(
        "globex",
        json!({"user": "gina", "name": "globex-gina", "scopes": ALL}),
    );
    let globex_key = globex["key"].as_str().unwrap().to_owned();

    // Without the header: 400 `tenant_required`, naming the header.
    let r = s.get("/v1/keys").bearer(TOKEN).send();
    r.error(400, "tenant_required");
    assert!(r.text().contains("Keyledger-Tenant"), "{}", r.text());
    let r = s
        .get("/v1/keys")
        .bearer(TOKEN)
        .header("Keyledger-Act-As", "alice")
        .send();
    r.error(400, "tenant_required");

    // With it: acme's keys, and only acme's.
    let r = s
        .get("/v1/keys")
        .bearer(TOKEN)
        .header("Keyledger-Tenant", "acme")
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json();
    assert_eq!(names(&list), ["acme-alice"], "{list}");
    assert_eq!(list["active_count"], 1);
    let r = s
        .get("/v1/keys")
        .api_key(TOKEN)
        .header("Keyledger-Tenant", "globex")
        .send();
    assert_eq!(names(&r.json()), ["globex-gina"]);

    // whoami: the operator, in the tenant, with every scope.
    let me = s
        .get("/v1/whoami")
        .bearer(TOKEN)
        .header("Keyledger-Tenant", "acme")
        .send()
        .json();
    assert_eq!(me["tenant_id"], "acme", "{me}");
    assert_eq!(me["operator"], true, "{me}");
    // Every scope: the five, and `webhooks:manage`.
    let every: Vec<&str> = ALL.iter().copied().chain(["webhooks:manage"]).collect();
    assert_eq!(me["scopes"], json!(every), "{me}");
    assert!(
        me.get("owner").is_none() && me.get("key_id").is_none(),
        "{me}"
    );
    let me = s
        .get("/v1/whoami")
        .bearer(TOKEN)
        .header("Keyledger-Tenant", "acme")
        .header("Keyledger-Act-As", "bob")
        .send()
        .json();
    assert_eq!(
        (&me["owner"], &me["operator"]),
        (&json!("bob"), &json!(true))
    );
    // A key's whoami is unchanged: no `operator` field.
    let me = s.get("/v1/whoami").bearer(&globex_key).send().json();
    assert!(me.get("operator").is_none(), "{me}");
    assert_eq!(me["owner"], "gina");

    // Acting as bob: bob creates a key (he owns it, the trail names him).
    let r = s
        .post("/v1/keys")
        .bearer(TOKEN)
        .header("Keyledger-Tenant", "acme")
        .header("Keyledger-Act-As", "bob")
        .json(&json!({"name": "bob's", "scopes": ["keys:read"]}))
        .send();
    assert_eq!(r.status, 201, "{}", r.text());
    let bobs = r.json();
    assert_eq!(bobs["created_by"], "bob", "{bobs}");
    let bobs_id = bobs["id"].as_str().unwrap().to_owned();
    // The operator as itself cannot create a key without naming an owner...
    let r = s
        .post("/v1/keys")
        .bearer(TOKEN)
        .header("Keyledger-Tenant", "acme")
        .json(&json!({"name": "nobody's"}))
        .send();
    r.error(422, "invalid_field");
    assert!(r.text().contains("must name the user"), "{}", r.text());
    // ...but revokes any key of the tenant, recorded as the operator.
    let r = s
        .post(&format!("/v1/keys/{alice_id}/revoke"))
        .bearer(TOKEN)
        .header("Keyledger-Tenant", "acme")
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    let trail = s
        .get("/v1/audit?type=KeyCreated,KeyRevoked")
        .bearer(TOKEN)
        .header("Keyledger-Tenant", "acme")
        .send()
        .json();
    let events = trail["events"].as_array().expect("events");
    let actor_of = |kind: &str, key: &str| -> Value {
        events
            .iter()
            .find(|e| e["type"] == kind && e["key_id"] == key)
            .unwrap_or_else(|| panic!("{kind} of {key} in {trail}"))["actor"]
            .clone()
    };
    assert_eq!(
        actor_of("KeyCreated", &bobs_id),
        json!({"type": "user", "id": "bob", "display": "User: bob"})
    );
    assert_eq!(actor_of("KeyRevoked", &alice_id)["type"], "operator");
    assert!(
        events.iter().all(|e| e["tenant"] == "acme"),
        "only acme's events: {trail}"
    );

    // A key naming another tenant is refused, and learns nothing of it.
    for path in ["/v1/keys", "/v1/audit", "/v1/whoami", "/v1/usage/summary"] {
        let r = s
            .get(path)
            .bearer(&globex_key)
            .header("Keyledger-Tenant", "acme")
            .send();
        r.error(403, "forbidden");
        assert!(!r.text().contains("acme-alice") && !r.text().contains(&alice_id));
    }
    let r = s
        .post(&format!("/v1/keys/{bobs_id}/revoke"))
        .bearer(&globex_key)
        .header("Keyledger-Tenant", "acme")
        .send();
    r.error(403, "forbidden");
    // Its own tenant named: the header changes nothing.
    let r = s
        .get("/v1/keys")
        .bearer(&globex_key)
        .header("Keyledger-Tenant", "globex")
        .send();
    assert_eq!(names(&r.json()), ["globex-gina"]);
    // A key cannot act as another user.
    s.get("/v1/keys")
        .bearer(&globex_key)
        .header("Keyledger-Act-As", "alice")
        .send()
        .error(403, "forbidden");
    // bob's key is still active: nothing crossed.
    let r = s
        .get(&format!("/v1/keys/{bobs_id}"))
        .bearer(TOKEN)
        .header("Keyledger-Tenant", "acme")
        .send();
    assert_eq!(r.json()["status"], "active");

    // Bad header values: 400, the value never quoted back.
    for (name, value) in [
        ("Keyledger-Tenant", "no pe"),
        ("Keyledger-Tenant", globex_key.as_str()),
        ("Keyledger-Act-As", globex_key.as_str()),
    ] {
        let r = s
            .get("/v1/keys")
            .bearer(TOKEN)
            .header(
                "Keyledger-Tenant",
                if name == "Keyledger-Tenant" {
                    value
                } else {
                    "acme"
                },
            )
            .header(
                if name == "Keyledger-Act-As" {
                    name
                } else {
                    "X-Other"
                },
                value,
            )
            .send();
        r.error(400, "invalid_header");
        assert!(!r.text().contains(value), "{}", r.text());
    }

    // A wrong token on an admin route says it is not the operator token.
    let r = s
        .delete("/v1/admin/tenants/acme/users/alice")
        .bearer("not-the-operator-token-at-all-0123")
        .send();
    r.error(401, "invalid_operator_token");
    assert!(r.text().contains("not the operator token"), "{}", r.text());
    let logs = s.stop();
    assert!(!logs.contains(TOKEN) && !logs.contains(&globex_key));
}
