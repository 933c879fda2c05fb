//! The limits of `atosnap serve` (issue 14, item 10): a stalled request
//! head, the connection cap, a validate flood, cross-site browser requests
//! and malformed bodies.

use crate::support::http::*;
use crate::support::*;
use std::time::Duration;

/// `serve` with extra environment (the limits are set by variables).
fn start_with_env(rt: &Runtime, env: &[(&str, &str)], extra: &[&str]) -> Server {
    let mut c = rt.loud_command();
    c.args(["serve", "--listen", "127.0.0.1:0"]).args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    Server::spawn(c)
}

/// Reads until the server closes; Err(TimedOut) when it never does.
fn read_until_closed(stream: &mut std::net::TcpStream) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => Ok(got),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(got),
        Err(e) => Err(e),
    }
}

#[test]
fn a_client_that_stalls_in_its_request_head_is_disconnected() {
    use std::io::Write;
    let rt = Runtime::synthetic();
    rt.run(&["init"]); // /healthz answers 200 only with a store
    let server = start_with_env(&rt, &[("ATOSNAP_SERVE_HEADER_TIMEOUT_MS", "300")], &[]);
    // Half a request head, then nothing (slowloris).
    let mut slow = std::net::TcpStream::connect(server.addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    let answer = read_until_closed(&mut slow).expect("the stalled connection stays open");
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    // A connection that sends nothing at all is closed too.
    let mut idle = std::net::TcpStream::connect(server.addr).unwrap();
    read_until_closed(&mut idle).expect("the idle connection stays open");
    // The server still answers whole requests.
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn connections_past_the_cap_are_refused_with_retry_after() {
    let rt = Runtime::synthetic();
    rt.run(&["init"]); // /healthz answers 200 only with a store
    let server = start_with_env(&rt, &[("ATOSNAP_SERVE_MAX_CONNECTIONS", "4")], &[]);
    // Four connections that say nothing hold every slot (the header
    // timeout is the default 60 s).
    let idle: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(server.addr).unwrap())
        .collect();
    let r = server.get("/healthz");
    r.assert_error(503, "too_many_connections");
    assert!(r.header("Retry-After").is_some(), "{r:?}");
    // A slot freed: health answers again.
    drop(idle);
    wait_until(
        "/healthz answering after the idle connections closed",
        || server.get("/healthz").status == 200,
    );
}

#[test]
fn a_validate_flood_is_turned_away_while_health_and_metrics_answer() {
    let rt = Runtime::synthetic();
    let server = rt.start(&["--lock-wait", "600"]);
    let r = server.post("/admin/backup", "");
    assert_eq!(r.status, 200, "{}", r.text());
    let stamp = r.json()["stamp"].as_str().unwrap().to_string();
    // A gc holds the store: each validation admitted waits for it, so the
    // slots stay taken while the flood arrives.
    let held = atosnap::store::lock::lock_exclusive(&rt.store(), "gc-held-by-test", Duration::ZERO)
        .unwrap();
    let flood = 8;
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..flood {
        let (tx, addr, path) = (
            tx.clone(),
            server.addr,
            format!("/admin/backup/{stamp}/validate"),
        );
        std::thread::spawn(move || {
            let _ = tx.send(request(addr, "GET", &path, &[], b""));
        });
    }
    let slots = atosnap::serve::VALIDATE_SLOTS;
    for _ in 0..flood - slots {
        let r = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a validation past the slots waits instead of being refused");
        r.assert_error(409, "store_locked");
        assert!(r.header("Retry-After").is_some(), "{r:?}");
    }
    // The admitted ones still wait; probes answer meanwhile.
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/metrics").status, 200);
    assert!(
        rx.try_recv().is_err(),
        "a validation ran past the held lock"
    );
    drop(held);
    for _ in 0..slots {
        let r = rx.recv_timeout(Duration::from_secs(120)).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["valid"], true);
    }
}

#[test]
fn cross_site_browser_requests_are_refused_without_a_token() {
    let rt = Runtime::synthetic();
    rt.run(&["init"]); // /healthz answers 200 only with a store
    let server = rt.start(&[]);
    let own = server.addr.to_string();
    let port = server.addr.port();
    let send = |host: Option<&str>, method: &str, path: &str, headers: &[(&str, &str)]| {
        try_request_as(server.addr, host, method, path, headers, b"").unwrap()
    };
    // A page on another site posting to the loopback server.
    let r = send(
        Some(&own),
        "POST",
        "/admin/backup",
        &[("Origin", "http://evil.example")],
    );
    r.assert_error(403, "cross_site_request");
    assert_eq!(rt.run(&["list"]).json["snapshots"], serde_json::json!([]));
    // DNS rebinding: the page's own name resolved to 127.0.0.1.
    let rebound = format!("evil.example:{port}");
    send(Some(&rebound), "GET", "/admin/backup", &[]).assert_error(403, "cross_site_request");
    send(Some(&own), "GET", "/healthz", &[("Origin", "null")])
        .assert_error(403, "cross_site_request");
    // The server's own address, with or without its own Origin, is served.
    assert_eq!(send(Some(&own), "GET", "/healthz", &[]).status, 200);
    let origin = format!("http://{own}");
    assert_eq!(
        send(Some(&own), "GET", "/healthz", &[("Origin", &origin)]).status,
        200
    );
    let local = format!("localhost:{port}");
    assert_eq!(send(Some(&local), "GET", "/healthz", &[]).status, 200);
    // With a token the token decides (a browser cannot send it by itself).
    let token = rt.path("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let guarded = rt.start(&["--token-file", token.to_str().unwrap()]);
    let r = try_request_as(
        guarded.addr,
        Some("evil.example"),
        "GET",
        "/healthz",
        &[("Authorization", "Bearer 0123456789abcdef0123456789abcdef")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_body_that_is_not_an_object_or_has_unknown_fields_is_400() {
    let rt = Runtime::synthetic();
    let server = rt.start(&[]);
    // `[true]` was taken as include_chroma: true.
    server
        .post("/admin/backup", "[true]")
        .assert_error(400, "body_not_object");
    server
        .post("/admin/verify", "null")
        .assert_error(400, "body_not_object");
    server
        .post(
            "/admin/backup",
            r#"{"include_chroma": true, "chroma": true}"#,
        )
        .assert_error(400, "unknown_field");
    assert!(
        !rt.store().join("snapshots").exists(),
        "a snapshot was taken"
    );
    assert_eq!(server.post("/admin/backup", "{}").status, 200);
}

/// A client that sends requests and never reads the answers: once the
/// socket buffers fill, its answer stalls. The connection is closed after
/// the stall limit (the header timeout), so it neither keeps its place
/// under the cap for ever nor holds up a shutdown.
#[test]
fn a_client_that_never_reads_its_answers_is_disconnected() {
    use std::io::Write;
    let rt = Runtime::synthetic();
    rt.run(&["init"]);
    let mut server = start_with_env(
        &rt,
        &[
            ("ATOSNAP_SERVE_HEADER_TIMEOUT_MS", "500"),
            ("ATOSNAP_SERVE_MAX_CONNECTIONS", "1"),
        ],
        &[],
    );
    let mut greedy = std::net::TcpStream::connect(server.addr).unwrap();
    greedy
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    for _ in 0..20_000 {
        if greedy.write_all(req.as_bytes()).is_err() {
            break;
        }
    }
    // Its slot comes free: the next client is served, not refused.
    wait_until("the stalled connection to be closed", || {
        server.get("/healthz").status == 200
    });
    server.signal("TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exited = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        exited.and_then(|s| s.code()),
        Some(0),
        "{}",
        server.log_text()
    );
    drop(greedy);
}
