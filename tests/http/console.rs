//! The web console as the real binary serves it (docs/architecture.md,
//! "The web console"): `/` is the page, with a strict Content-Security-Policy
//! and the other security headers; every asset it references, and every
//! module those import, is served with its type and the same headers; none
//! of them names anything outside the server; unknown paths are the API's
//! 404, not the page.

use std::collections::BTreeSet;

use super::{Options, Resp, Server};
use crate::util::Data;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

#[track_caller]
fn assert_console_headers(r: &Resp, what: &str) {
    assert_eq!(
        r.header("content-security-policy"),
        Some(CSP),
        "{what}: CSP"
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{what}");
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
    assert!(r.header("etag").is_some(), "{what}: an ETag");
}

/// The values of `attr="…"` in an HTML text.
fn attributes(html: &str, attr: &str) -> Vec<String> {
    let needle = format!("{attr}=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest.find('"').map(|end| rest[..end].to_owned())
        })
        .collect()
}

/// The modules a JavaScript module imports (`from './x.js'`), as paths
/// relative to `base` (the importing file's folder, `/console/...`).
fn imports(js: &str, base: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in js.match_indices(" from '") {
        let rest = &js[i + 7..];
        let Some(end) = rest.find('\'') else { continue };
        let mut path: Vec<&str> = base.trim_end_matches('/').split('/').collect();
        for part in rest[..end].split('/') {
            match part {
                "." => {}
                ".." => {
                    path.pop();
                }
                p => path.push(p),
            }
        }
        out.push(path.join("/"));
    }
    out
}

/// The text with its licence comments (`/*! … */`) taken out.
fn without_licence_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("/*!") {
        out.push_str(&rest[..start]);
        rest = rest[start..]
            .find("*/")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    out.push_str(rest);
    out
}

/// Any address outside the server: `http://`, `https://`, or `//host`
/// after a quote, a parenthesis or `=` (a protocol-relative URL). The SVG
/// namespace is a name, never fetched.
fn external_urls(text: &str) -> Vec<String> {
    let text = without_licence_comments(text).replace("http://www.w3.org/2000/svg", "");
    let mut found = Vec::new();
    for scheme in ["http://", "https://"] {
        for (i, _) in text.match_indices(scheme) {
            found.push(text[i..].chars().take(60).collect());
        }
    }
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices("//") {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(i + 2).copied();
        if matches!(before, Some(b'"' | b'\'' | b'`' | b'(' | b'='))
            && after.is_some_and(|c| c.is_ascii_alphanumeric())
        {
            found.push(text[i.saturating_sub(1)..].chars().take(60).collect());
        }
    }
    found
}

fn expected_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("html") => "text/html; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    }
}

#[test]
fn the_console_is_served_with_its_assets_under_a_strict_policy() {
    let d = Data::new();
    let s = Server::start(&d, Options::default());

    let page = s.get("/").send();
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_console_headers(&page, "/");
    let html = page.text();
    assert!(html.contains("<title>keyledger</title>"), "{html}");
    // No inline script or style: every script has a source, no style
    // element or attribute, no event-handler attribute.
    assert_eq!(
        html.matches("<script").count(),
        attributes(&html, "src").len(),
        "{html}"
    );
    for inline in ["<style", "style=", "onclick=", "onload=", "javascript:"] {
        assert!(!html.contains(inline), "{inline} in the page");
    }

    // Every asset the page references, and every module those import.
    let mut todo: Vec<String> = attributes(&html, "src")
        .into_iter()
        .chain(attributes(&html, "href"))
        .filter(|p| p.starts_with("/console/"))
        .collect();
    assert!(todo.len() >= 4, "the page references its assets: {todo:?}");
    let mut seen = BTreeSet::new();
    let mut external = Vec::new();
    external.extend(external_urls(&html));
    while let Some(path) = todo.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let r = s.get(&path).send();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some(expected_type(&path)),
            "{path}"
        );
        assert_console_headers(&r, &path);
        let text = r.text();
        external.extend(
            external_urls(&text)
                .into_iter()
                .map(|u| format!("{path}: {u}")),
        );
        if path.ends_with(".js") && !path.contains("/vendor/") {
            let base = &path[..path.rfind('/').unwrap()];
            todo.extend(imports(&text, base));
            // The console's own code sets no inline style and parses no markup.
            for banned in ["innerHTML", "outerHTML", ".style.", "'style'", "eval("] {
                assert!(!text.contains(banned), "{path} uses {banned}");
            }
        }
    }
    for module in [
        "/console/app.js",
        "/console/api.js",
        "/console/ui.js",
        "/console/pages/keys.js",
        "/console/pages/audit.js",
        "/console/vendor/chart.js/chart.umd.min.js",
        "/console/style.css",
    ] {
        assert!(
            seen.contains(module),
            "{module} is reached from the page: {seen:?}"
        );
    }
    assert!(external.is_empty(), "external addresses: {external:#?}");

    // Revalidation: the ETag answers 304 with no body.
    let etag = page.header("etag").unwrap().to_owned();
    let again = s.get("/").header("If-None-Match", &etag).send();
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_console_headers(&again, "a 304");

    // Unknown paths are the API's 404 in its error format, not the page.
    for path in [
        "/console/nope.js",
        "/keys",
        "/console/",
        "/index.html",
        "/console/../Cargo.toml",
    ] {
        let r = s.get(path).send();
        r.error(404, "not_found");
        assert!(!r.text().contains("<html"), "{path}");
    }
    // The API is untouched by the console's routes.
    s.get("/v1/keys").send().error(401, "missing_credentials");
}

#[test]
fn the_external_url_check_finds_what_it_must() {
    assert!(external_urls("fetch('https://cdn.example/x.js')").len() == 1);
    assert!(external_urls("a = \"//cdn.example/x\"").len() == 1);
    assert!(external_urls("url(//fonts.example/f.woff)").len() == 1);
    assert!(external_urls("/*! https://licence.example */ x = 1; // a comment").is_empty());
    assert!(external_urls("var Jt=/\\/\\*[\\s\\S]*?\\*\\//g;").is_empty());
    assert_eq!(
        imports(
            "import { a } from './x.js';\nimport * as b from '../y.js';",
            "/console/pages"
        ),
        ["/console/pages/x.js", "/console/y.js"]
    );
}
