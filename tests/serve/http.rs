//! Black-box tests of `atosnap serve` over real HTTP on loopback: each
//! route's status and body (the same JSON as the CLI), each error status,
//! the token, body limits, traversal stamps, concurrent creates, a GET
//! answered while a create runs, SIGTERM and SIGKILL during a create, and
//! /metrics against `list`.
//!
//! A create is held mid-flight deterministically by holding the ingestion
//! lock shared (as a service writer would): the create waits for its
//! exclusive lock before reading Chroma.

use crate::support::http::*;
use crate::support::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

fn without(mut v: Value, keys: &[&str]) -> Value {
    for k in keys {
        if let Some(o) = v.as_object_mut() {
            o.remove(*k);
        }
    }
    v
}

#[test]
fn routes_answer_with_the_cli_json() {
    let rt = Runtime::synthetic();
    let server = rt.start(&[]);

    let r = server.post(
        "/admin/backup",
        r#"{"include_chroma": true, "tags": ["nightly"]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let created = r.json();
    let stamp = created["stamp"].as_str().unwrap().to_string();
    assert_eq!(created["chroma_snapshot_included"], true);
    assert_eq!(created["validated"], true, "{created}");
    assert_eq!(created["tags"], serde_json::json!(["nightly"]));
    for field in [
        "created_at",
        "db_size_bytes",
        "registry_snapshot_included",
        "chroma_snapshot_files",
        "chroma_snapshot_bytes",
        "chunks_total",
        "chunks_new",
        "bytes_new_stored",
        "duration_ms",
        "validation_errors",
        "warnings",
    ] {
        assert!(created.get(field).is_some(), "{field} missing: {created}");
    }

    // No body: the defaults (no Chroma).
    let r = server.post("/admin/backup", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["chroma_snapshot_included"], false);

    // list: the CLI's document.
    let r = server.get("/admin/backup");
    assert_eq!(r.status, 200);
    let Out {
        code,
        json: cli_list,
        ..
    } = rt.run(&["list"]);
    assert_eq!(code, 0);
    assert_eq!(r.json(), cli_list);
    assert_eq!(cli_list["snapshots"].as_array().unwrap().len(), 2);

    // validate: the CLI's document (timing aside).
    let r = server.get(&format!("/admin/backup/{stamp}/validate"));
    assert_eq!(r.status, 200, "{}", r.text());
    let Out {
        code,
        json: cli_validate,
        ..
    } = rt.run(&["validate", &stamp]);
    assert_eq!(code, 0);
    assert_eq!(
        without(r.json(), &["duration_ms"]),
        without(cli_validate, &["duration_ms"])
    );
    assert_eq!(r.json()["valid"], true);

    // verify, whole store and one snapshot.
    let r = server.post("/admin/verify", "");
    assert_eq!(r.status, 200, "{}", r.text());
    let Out {
        code,
        json: cli_verify,
        ..
    } = rt.run(&["verify"]);
    assert_eq!(code, 0);
    // Each run writes its own verify record (`recorded` names it).
    assert_eq!(
        without(r.json(), &["duration_ms", "recorded"]),
        without(cli_verify, &["duration_ms", "recorded"])
    );
    let r = server.post("/admin/verify", &format!(r#"{{"snapshots": ["{stamp}"]}}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["snapshots"].as_object().unwrap().len(), 1);

    // healthz: the store, the newest stamp and its age.
    let r = server.get("/healthz");
    assert_eq!(r.status, 200);
    let h = r.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["snapshots"], 2);
    assert_eq!(h["newest_stamp"], cli_list["snapshots"][1]["stamp"]);
    assert_eq!(h["store"], rt.store().display().to_string());
    assert!(h["newest_age_seconds"].is_u64(), "{h}");
    assert_eq!(h["create_running"], false);

    // drill: the drill result, logged in the store.
    let r = server.post(&format!("/admin/backup/{stamp}/drill"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    let d = r.json();
    assert_eq!(d["stamp"], stamp.as_str());
    assert_eq!(d["ok"], true, "{d}");
    assert!(d["files_checked"].as_u64().unwrap() > 0, "{d}");
    let listed = server.get("/admin/backup").json();
    assert_eq!(listed["snapshots"][0]["last_drill"]["ok"], true, "{listed}");

    // metrics: OpenMetrics text.
    let r = server.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .contains("openmetrics-text"));
    assert!(r.text().trim_end().ends_with("# EOF"));
}

#[test]
fn errors_have_their_status_and_code() {
    let rt = Runtime::synthetic();
    rt.run(&["create"]);
    let server = rt.start(&[]);

    // 400: malformed stamps, bodies, fields.
    server
        .get("/admin/backup/nope/validate")
        .assert_error(400, "invalid_stamp");
    server
        .get("/admin/backup/20260411T120000Z-1/validate")
        .assert_error(400, "invalid_stamp");
    server
        .post("/admin/backup/garbage/drill", "")
        .assert_error(400, "invalid_stamp");
    server
        .post("/admin/backup", "{not json")
        .assert_error(400, "bad_json");
    server
        .post("/admin/backup", r#"{"include_chroma": "yes"}"#)
        .assert_error(400, "bad_json");
    server
        .post("/admin/backup", r#"{"include_chroma": true, "at": "2020"}"#)
        .assert_error(400, "unknown_field");
    server
        .post("/admin/verify", r#"{"snapshot": []}"#)
        .assert_error(400, "unknown_field");
    server
        .post("/admin/verify", r#"{"snapshots": ["../x"]}"#)
        .assert_error(400, "invalid_stamp");

    // 404: unknown stamps and routes.
    server
        .get("/admin/backup/20200101T000000Z/validate")
        .assert_error(404, "snapshot_missing");
    server
        .post("/admin/backup/20200101T000000Z/drill", "")
        .assert_error(404, "snapshot_missing");
    server
        .post("/admin/verify", r#"{"snapshots": ["20200101T000000Z"]}"#)
        .assert_error(404, "snapshot_missing");
    server.get("/admin/nothing").assert_error(404, "not_found");
    server
        .get("/admin/backup/20200101T000000Z")
        .assert_error(404, "not_found");

    // 405 with the same document shape.
    request(server.addr, "DELETE", "/admin/backup", &[], b"")
        .assert_error(405, "method_not_allowed");

    // 413 over 64 KiB; exactly 64 KiB is read.
    let mut big = br#"{"snapshots": []}"#.to_vec();
    big.resize(64 * 1024, b' ');
    let r = request(server.addr, "POST", "/admin/verify", &[], &big);
    assert_eq!(r.status, 200, "{}", r.text());
    big.push(b' ');
    request(server.addr, "POST", "/admin/verify", &[], &big).assert_error(413, "body_too_large");
    let huge = vec![b' '; 300 * 1024];
    request(server.addr, "POST", "/admin/backup", &[], &huge).assert_error(413, "body_too_large");
    assert_eq!(
        rt.run(&["list"]).json["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Traversal: never served, never a 2xx.
    for path in [
        "/admin/backup/..%2F..%2Fconfig.json/validate",
        "/admin/backup/..%2F../validate",
        "/admin/backup/%2e%2e/validate",
        "/admin/backup/..%5Cx/validate",
        "/admin/backup/%FF%FE/validate",
    ] {
        server.get(path).assert_error(400, "invalid_stamp");
    }
    for path in [
        "/admin/backup/../x/validate",
        "/admin/backup/../../config.json",
    ] {
        let r = server.get(path);
        assert!(r.status == 400 || r.status == 404, "{path}: {}", r.status);
        assert!(r.json()["error"]["code"].is_string());
    }
    // An unparseable folder under snapshots/ is not served either.
    std::fs::create_dir_all(rt.store().join("snapshots/not-a-stamp")).unwrap();
    server
        .get("/admin/backup/not-a-stamp/validate")
        .assert_error(400, "invalid_stamp");

    // The request log names each outcome.
    let log = server.log_text();
    assert!(log.contains("status=413"), "{log}");
    assert!(log.contains("code=invalid_stamp"), "{log}");
}

#[test]
fn internal_errors_are_500_with_the_library_code_and_logged() {
    let rt = Runtime::synthetic();
    let mut c = rt.command_with_db(std::path::Path::new("/nonexistent/atocore.db"));
    c.args(["serve", "--listen", "127.0.0.1:0"]);
    let server = Server::spawn(c);
    server
        .post("/admin/backup", "")
        .assert_error(500, "db_missing");
    assert!(!rt.store().exists(), "nothing written for a missing db");
    // healthz: the store is not there yet.
    server.get("/healthz").assert_error(503, "store_missing");
    server
        .get("/admin/backup")
        .assert_error(404, "store_missing");
    let log = server.log_text();
    assert!(
        log.contains("request failed") && log.contains("/nonexistent/atocore.db"),
        "{log}"
    );
}

#[test]
fn a_locked_store_answers_409_naming_the_holder() {
    let rt = Runtime::synthetic();
    rt.run(&["create"]);
    let stamp = rt.run(&["list"]).json["snapshots"][0]["stamp"]
        .as_str()
        .unwrap()
        .to_string();
    let server = rt.start(&["--lock-wait", "1"]);
    let held = atosnap::store::lock::lock_exclusive(
        &rt.store(),
        "gc-held-by-test",
        Duration::from_secs(5),
    )
    .unwrap();
    let r = server.post("/admin/backup", "");
    r.assert_error(409, "store_locked");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("gc-held-by-test"), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    server
        .get(&format!("/admin/backup/{stamp}/validate"))
        .assert_error(409, "store_locked");
    server
        .post("/admin/verify", "")
        .assert_error(409, "store_locked");
    // Reads that need no lock still answer.
    assert_eq!(server.get("/admin/backup").status, 200);
    assert_eq!(server.get("/healthz").status, 200);
    drop(held);
    assert_eq!(server.post("/admin/backup", "").status, 200);
}

#[test]
fn the_token_is_required_off_loopback_and_checked() {
    let rt = Runtime::synthetic();
    rt.run(&["create"]);
    let secret = "s3cret-token-0123456789abcdef";

    // No token on a non-loopback address: refused, exit 1.
    let out = rt
        .loud_command()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["code"], "serve_refused");
    // The token is never a flag value.
    let out = rt
        .loud_command()
        .args(["serve", "--token", secret])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A short token is refused.
    let short = rt.path("short-token");
    std::fs::write(&short, "abc\n").unwrap();
    let out = rt
        .loud_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--token-file"])
        .arg(&short)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    let token_file = rt.path("token");
    std::fs::write(&token_file, format!("{secret}\n")).unwrap();
    // Off loopback with the token (file from the environment).
    let mut c = rt.loud_command();
    c.args(["serve", "--listen", "0.0.0.0:0"])
        .env("ATOSNAP_TOKEN_FILE", &token_file);
    let mut server = Server::spawn(c);
    server.addr.set_ip([127, 0, 0, 1].into());
    for path in ["/admin/backup", "/healthz", "/metrics", "/no/such/route"] {
        server.get(path).assert_error(401, "token_missing");
    }
    let r = request(
        server.addr,
        "GET",
        "/admin/backup",
        &[("Authorization", "Bearer wrong-token-0123456789abcdef")],
        b"",
    );
    r.assert_error(401, "token_invalid");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    request(
        server.addr,
        "GET",
        "/admin/backup",
        &[("Authorization", &format!("Basic {secret}"))],
        b"",
    )
    .assert_error(401, "token_invalid");
    request(
        server.addr,
        "POST",
        "/admin/backup",
        &[("Authorization", &format!("Bearer {secret}x"))],
        b"",
    )
    .assert_error(401, "token_invalid");
    let auth = format!("Bearer {secret}");
    let r = request(
        server.addr,
        "GET",
        "/admin/backup",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), rt.run(&["list"]).json);
    let r = request(
        server.addr,
        "POST",
        "/admin/backup",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let log = server.log_text();
    assert!(log.contains("status=401"), "{log}");
    assert!(
        !log.contains(secret),
        "the token leaked into the log:\n{log}"
    );
    assert!(
        !log.contains("wrong-token"),
        "a presented token leaked:\n{log}"
    );
}

#[test]
fn a_backup_request_with_a_blank_tag_is_refused() {
    let rt = Runtime::synthetic();
    let server = rt.start(&[]);
    let r = server.post("/admin/backup", r#"{"tags": ["ok", "  "]}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("not a tag"), "{}", r.text());
    // Refused before the gate, and before a missing store is made.
    assert!(!rt.store().exists());
}

/// Requests are counted before the token is checked, labelled by their
/// method, which a client may invent: without a token, anyone reaching the
/// port once grew /metrics by a series per made-up method, without end.
#[test]
fn made_up_methods_cannot_grow_the_metrics() {
    let rt = Runtime::synthetic();
    rt.run(&["init"]);
    let token = rt.path("token");
    let secret = "0123456789abcdef0123456789abcdef";
    std::fs::write(&token, secret).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let server = rt.start(&["--token-file", token.to_str().unwrap()]);
    for i in 0..50 {
        let method = format!("X{i:04}{}", "Y".repeat(100));
        assert_eq!(
            request(server.addr, &method, "/healthz", &[], b"").status,
            401
        );
    }
    let auth = format!("Bearer {secret}");
    let r = request(
        server.addr,
        "GET",
        "/metrics",
        &[("Authorization", &auth)],
        b"",
    );
    let text = r.text();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("atosnap_http_requests_total"))
        .collect();
    assert_eq!(series.len(), 1, "{series:?}");
    assert!(
        series[0].contains("method=\"other\"") && series[0].ends_with(" 50"),
        "{series:?}"
    );
}

#[test]
fn two_concurrent_creates_both_land_or_one_is_refused_and_the_store_stays_sound() {
    let rt = Runtime::synthetic();
    rt.run(&["create"]);
    let server = rt.start(&["--lock-wait", "120"]);
    let addr = server.addr;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                request(
                    addr,
                    "POST",
                    "/admin/backup",
                    &[],
                    format!(r#"{{"include_chroma": true, "tags": ["t{i}"]}}"#).as_bytes(),
                )
            })
        })
        .collect();
    let responses: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut stamps = HashSet::new();
    for r in &responses {
        match r.status {
            200 => {
                let doc = r.json();
                assert_eq!(doc["validated"], true, "{doc}");
                stamps.insert(doc["stamp"].as_str().unwrap().to_string());
            }
            _ => r.assert_error(409, "store_locked"),
        }
    }
    let ok = responses.iter().filter(|r| r.status == 200).count();
    assert!(ok >= 1);
    assert_eq!(stamps.len(), ok, "two creates got the same stamp");
    let Out {
        code, json: list, ..
    } = rt.run(&["list"]);
    assert_eq!(code, 0);
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1 + ok);
    assert!(list["unparseable"].as_array().unwrap().is_empty());
    let Out {
        code, json: report, ..
    } = rt.run(&["verify"]);
    assert_eq!(code, 0, "{report}");
}

#[test]
fn gets_answer_while_a_create_runs_and_list_never_shows_it_half_done() {
    let rt = Runtime::synthetic();
    rt.run(&["create"]);
    let lock_path = rt.path("ingestion.lock");
    let writer = hold_shared(&lock_path);
    let lock_arg = lock_path.display().to_string();
    let server = rt.start(&["--lock-wait", "300", "--ingestion-lock", &lock_arg]);
    let addr = server.addr;
    let create = std::thread::spawn(move || {
        request(
            addr,
            "POST",
            "/admin/backup",
            &[],
            br#"{"include_chroma": true}"#,
        )
    });
    // The create is running: it holds the store lock and waits for the
    // ingestion lock, which this test holds.
    wait_until("the create to take the store lock", || {
        create_holds_store_lock(&rt.store())
    });
    for _ in 0..3 {
        let r = server.get("/admin/backup");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["snapshots"].as_array().unwrap().len(), 1);
        let h = server.get("/healthz").json();
        assert_eq!(h["create_running"], true, "{h}");
        assert_eq!(server.get("/metrics").status, 200);
    }
    assert!(
        !create.is_finished(),
        "the create finished under a held ingestion lock"
    );
    drop(writer);
    let r = create.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["validated"], true);
    assert_eq!(
        server.get("/admin/backup").json()["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(server.get("/healthz").json()["create_running"], false);
}

#[test]
fn sigterm_during_a_create_lets_it_finish_starts_no_queued_one_then_exits_0() {
    let rt = Runtime::synthetic();
    let lock_path = rt.path("ingestion.lock");
    let writer = hold_shared(&lock_path);
    let lock_arg = lock_path.display().to_string();
    let mut server = rt.start(&["--lock-wait", "300", "--ingestion-lock", &lock_arg]);
    let addr = server.addr;
    let create = std::thread::spawn(move || {
        request(
            addr,
            "POST",
            "/admin/backup",
            &[],
            br#"{"include_chroma": true, "tags": ["last"]}"#,
        )
    });
    wait_until("the create to take the store lock", || {
        create_holds_store_lock(&rt.store())
    });
    // A second create waits at the gate for the first when the signal
    // comes: it must not start once the first is done.
    let queued = std::thread::spawn(move || {
        request(
            addr,
            "POST",
            "/admin/backup",
            &[],
            br#"{"include_chroma": true, "tags": ["queued"]}"#,
        )
    });
    std::thread::sleep(Duration::from_secs(1));
    server.signal("TERM");
    wait_until("the server to stop accepting", || {
        std::net::TcpStream::connect(addr).is_err()
    });
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited with a create running"
    );
    assert!(!create.is_finished());
    drop(writer);
    let r = create.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let q = queued.join().unwrap();
    assert_eq!(q.status, 503, "{}", q.text());
    assert_eq!(q.json()["error"]["code"], "shutting_down");
    assert!(q
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("retry-after")));
    let stamp = r.json()["stamp"].as_str().unwrap().to_string();
    let (code, out) = server.wait();
    assert_eq!(code, Some(0), "{out}");
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["stopped_by"], "SIGTERM");
    let Out {
        code, json: report, ..
    } = rt.run(&["verify"]);
    assert_eq!(code, 0, "{report}");
    let list = rt.run(&["list"]).json;
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["snapshots"][0]["stamp"], stamp.as_str());
    assert_eq!(list["snapshots"][0]["tags"], serde_json::json!(["last"]));
}

#[test]
fn sigkill_during_a_create_leaves_no_partial_snapshot() {
    let rt = Runtime::synthetic();
    rt.run(&["create"]);
    let lock_path = rt.path("ingestion.lock");
    let writer = hold_shared(&lock_path);
    let lock_arg = lock_path.display().to_string();
    let server = rt.start(&["--lock-wait", "300", "--ingestion-lock", &lock_arg]);
    let addr = server.addr;
    let create = std::thread::spawn(move || {
        try_request(
            addr,
            "POST",
            "/admin/backup",
            &[],
            br#"{"include_chroma": true}"#,
        )
    });
    wait_until("the create to take the store lock", || {
        create_holds_store_lock(&rt.store())
    });
    server.signal("KILL");
    let (code, _) = server.wait();
    assert_eq!(code, None, "killed by a signal");
    let answered = create.join().unwrap();
    assert!(answered.is_err() || answered.is_ok_and(|r| r.status != 200));
    drop(writer);
    let Out {
        code, json: list, ..
    } = rt.run(&["list"]);
    assert_eq!(code, 0);
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1);
    assert!(list["unparseable"].as_array().unwrap().is_empty());
    let Out {
        code, json: report, ..
    } = rt.run(&["verify"]);
    assert_eq!(code, 0, "{report}");
    // The next create works and cleans up.
    let Out {
        code,
        json: created,
        ..
    } = rt.run(&["create", "--chroma"]);
    assert_eq!(code, 0, "{created}");
}

/// Parses OpenMetrics / Prometheus text: sample name -> value; checks that
/// every sample belongs to a family with a TYPE.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    let mut saw_eof = false;
    for line in text.lines() {
        assert!(!saw_eof, "content after # EOF");
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("TYPE name type");
            assert!(["gauge", "counter", "histogram"].contains(&ty), "type {ty}");
            types.insert(name.to_string(), ty.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line}");
        let (key, value) = line.rsplit_once(' ').expect("sample: name value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = key.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name}"
        );
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE for {name}");
        samples.insert(key.to_string(), value);
    }
    assert!(saw_eof, "no # EOF");
    samples
}

fn store_bytes(store: &std::path::Path) -> u64 {
    ["objects", "snapshots", "drills", "verifies", "copies"]
        .iter()
        .flat_map(|d| walkdir::WalkDir::new(store.join(d)).into_iter().flatten())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn metrics_parse_as_prometheus_text_and_match_list() {
    let rt = Runtime::synthetic();
    let Out { code, .. } = rt.run(&["create", "--at", "2026-04-01T12:00:00Z"]);
    assert_eq!(code, 0);
    let server = rt.start(&[]);
    let before = parse_exposition(&server.get("/metrics").text());
    assert_eq!(before["atosnap_snapshots"], 1.0);
    assert_eq!(before["atosnap_create_duration_seconds_count"], 0.0);
    assert!(!before.contains_key("atosnap_last_verify_success"));
    assert!(!before.contains_key("atosnap_last_drill_success"));
    assert_eq!(before["atosnap_last_drill_timestamp_seconds"], 0.0);

    for body in [r#"{"include_chroma": true}"#, ""] {
        assert_eq!(server.post("/admin/backup", body).status, 200);
    }
    assert_eq!(server.post("/admin/verify", "").status, 200);
    let first = rt.run(&["list"]).json["snapshots"][0]["stamp"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        server
            .post(&format!("/admin/backup/{first}/drill"), "{}")
            .status,
        200
    );
    let m = parse_exposition(&server.get("/metrics").text());
    let list = rt.run(&["list"]).json;
    let snaps = list["snapshots"].as_array().unwrap();
    assert_eq!(m["atosnap_store_up"], 1.0);
    assert_eq!(m["atosnap_snapshots"], snaps.len() as f64);
    let newest =
        chrono::DateTime::parse_from_rfc3339(snaps.last().unwrap()["created_at"].as_str().unwrap())
            .unwrap()
            .timestamp() as f64;
    assert_eq!(m["atosnap_last_snapshot_timestamp_seconds"], newest);
    assert!(m["atosnap_last_snapshot_age_seconds"] >= 0.0);
    assert_eq!(m["atosnap_store_bytes"], store_bytes(&rt.store()) as f64);
    assert_eq!(m["atosnap_create_duration_seconds_count"], 2.0);
    assert_eq!(
        m["atosnap_create_duration_seconds_bucket{le=\"+Inf\"}"],
        2.0
    );
    assert_eq!(m["atosnap_verify_duration_seconds_count"], 1.0);
    assert_eq!(m["atosnap_last_verify_success"], 1.0);
    assert!(m["atosnap_last_verify_timestamp_seconds"] > 0.0);
    assert_eq!(m["atosnap_last_drill_success"], 1.0);
    let drilled_at = chrono::DateTime::parse_from_rfc3339(
        list["snapshots"][0]["last_drill"]["at"].as_str().unwrap(),
    )
    .unwrap()
    .timestamp_millis() as f64
        / 1000.0;
    assert_eq!(m["atosnap_last_drill_timestamp_seconds"], drilled_at);
    assert_eq!(m["atosnap_drill_duration_seconds_count"], 1.0);
    assert_eq!(
        m["atosnap_http_requests_total{method=\"POST\",route=\"/admin/backup\",status=\"200\"}"],
        2.0
    );
}

/// Unix seconds of an RFC 3339 time, as the metrics give it.
fn unix(at: &Value) -> f64 {
    chrono::DateTime::parse_from_rfc3339(at.as_str().unwrap())
        .unwrap()
        .timestamp_millis() as f64
        / 1000.0
}

#[test]
fn metrics_show_cli_verify_drill_and_copy_and_survive_a_restart() {
    let rt = Runtime::synthetic();
    rt.create(&[]);
    let verify = rt.ok(&["verify"]);
    assert_eq!(verify["ok"], true);
    let drill = rt.ok(&["drill"]);
    assert_eq!(drill["ok"], true);
    // A destination whose address needs escaping in a label value.
    let dest = rt.path("off \"site\"\\x");
    let copy = rt.ok(&["copy", "--to", dest.to_str().unwrap()]);
    let to = copy["to"].as_str().unwrap().to_string();
    let list = rt.ok(&["list"]);
    let snap = &list["snapshots"][0];
    let copy_rec: Value = std::fs::read_dir(rt.store().join("copies"))
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .next()
        .unwrap();
    let escaped = to.replace('\\', "\\\\").replace('"', "\\\"");
    let copy_key = format!("atosnap_copy_last_success_timestamp_seconds{{to=\"{escaped}\"}}");
    for _ in 0..2 {
        // Started after the CLI runs, and once more: the same gauges.
        let server = rt.start(&[]);
        let m = parse_exposition(&server.get("/metrics").text());
        assert_eq!(m["atosnap_last_verify_success"], 1.0);
        assert_eq!(
            m["atosnap_last_verify_timestamp_seconds"],
            unix(&snap["last_verify"]["at"])
        );
        assert_eq!(m["atosnap_last_drill_success"], 1.0);
        assert_eq!(
            m["atosnap_last_drill_timestamp_seconds"],
            unix(&snap["last_drill"]["at"])
        );
        assert_eq!(m.get(&copy_key), Some(&unix(&copy_rec["at"])), "{m:?}");
        assert_eq!(m["atosnap_verify_duration_seconds_count"], 0.0);
        drop(server);
    }
    // A failed verify is the newest: the gauge says so.
    rt.corrupt_packs();
    assert_eq!(rt.run(&["verify"]).code, 3);
    let server = rt.start(&[]);
    let m = parse_exposition(&server.get("/metrics").text());
    assert_eq!(m["atosnap_last_verify_success"], 0.0);
}

#[test]
fn an_encrypted_store_is_served_with_its_password_and_refused_without() {
    let rt = Runtime::synthetic();
    let pw = rt.path("password");
    std::fs::write(&pw, "correct horse battery\n").unwrap();
    let cheap = |c: &mut std::process::Command| {
        c.env("ATOSNAP_KDF_PARAMS", "m=64,t=1,p=1")
            .env_remove("ATOSNAP_PASSWORD")
            .env_remove("ATOSNAP_PASSWORD_FILE");
    };
    let mut init = rt.loud_command();
    cheap(&mut init);
    let out = init
        .arg("--password-file")
        .arg(&pw)
        .args(["init", "--encryption", "repokey"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Without the password: refused at start, not on every request.
    let mut c = rt.loud_command();
    cheap(&mut c);
    let out = c
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["code"], "password_required", "{doc}");

    let mut c = rt.loud_command();
    cheap(&mut c);
    c.arg("--password-file")
        .arg(&pw)
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let server = Server::spawn(c);
    let r = server.post("/admin/backup", r#"{"include_chroma": true}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let stamp = r.json()["stamp"].as_str().unwrap().to_string();
    let r = server.get(&format!("/admin/backup/{stamp}/validate"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["valid"], true);
    assert_eq!(
        server.get("/admin/backup").json()["snapshots"][0]["stamp"],
        stamp.as_str()
    );
    assert_eq!(server.post("/admin/verify", "").json()["ok"], true);
    assert!(!server.log_text().contains("correct horse"));
}
