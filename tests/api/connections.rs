//! Connections as a pooled keep-alive client, a slow client and an operator meet them: a refusal
//! leaves the connection usable (or says that it closes), stalled and idle connections are timed
//! out, the connection caps (in all and per client address) answer 503 in the envelope, an
//! oversized request head is answered 431, and shutdown has a deadline.

use std::num::NonZero;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::support::{Backend, TestApp, ACME_KEY};

const UNKNOWN_KEY: &str = "neo_sk_test_AAAAAAAAAAAAAAAAAAAAAAAAAAAA";
/// Long enough for anything the server is asked to do here; a test that waits this long failed.
const PATIENCE: Duration = Duration::from_secs(15);

/// One HTTP/1.1 response read off a raw socket.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn mint_request(address: &str, credential: &str, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    let host = address.trim_start_matches("http://");
    format!(
        "POST /public-api/sessions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {credential}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads exactly one response (head and `Content-Length` body) from `stream`.
async fn read_response(stream: &mut TcpStream) -> std::io::Result<RawResponse> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .expect("content-length");
    while buffer.len() < head_end + length {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = serde_json::from_slice(&buffer[head_end..head_end + length]).expect("JSON body");
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// Whether the server closes `stream` (EOF or reset) within `PATIENCE`.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn padded_body(padding: usize) -> Value {
    json!({"session_id": "s-acme-1", "end_user": "pat", "padding": "x".repeat(padding)})
}

/// A keep-alive client alternates good mints and refusals (unknown key, before the body is
/// needed) with bodies of 0 to 3 KB on one socket, 200 requests three times over: every response arrives, and a refusal either
/// keeps the connection usable or says `Connection: close`; in both cases no request is lost.
async fn refusals_leave_keep_alive_connections_usable(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut stream = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("connect");
    let mut reconnects = 0;
    for i in (0..600usize).map(|i| i % 200) {
        let good = i % 2 == 0;
        let credential = if good { ACME_KEY } else { UNKNOWN_KEY };
        let request = mint_request(&app.address, credential, &padded_body((i * 157) % 3072));
        stream.write_all(&request).await.expect("write");
        let response = read_response(&mut stream)
            .await
            .unwrap_or_else(|e| panic!("request {i}: no response on the connection: {e}"));
        assert_eq!(
            response.status,
            if good { 200 } else { 401 },
            "request {i}: {}",
            response.body
        );
        if response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            reconnects += 1;
            stream = TcpStream::connect(app.address.trim_start_matches("http://"))
                .await
                .expect("reconnect");
        }
    }
    // The refusals drain their small bodies, so nothing needed a new connection.
    assert_eq!(reconnects, 0, "refusals closed the connection");
}

/// A body the server will not read (over the limit, declared up front) closes the connection,
/// and the response says so.
async fn an_unread_body_is_announced_with_connection_close(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut stream = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("connect");
    let head = format!(
        "POST /public-api/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACME_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let response = read_response(&mut stream).await.expect("response");
    assert_eq!(response.status, 413, "{}", response.body);
    assert_eq!(response.header("connection"), Some("close"));
}

/// Half-sent request heads are cut after the header timeout, and while 500 of them are open a
/// normal mint is still served.
async fn stalled_request_heads_are_cut_and_do_not_starve_mints(backend: Backend) {
    neo_sessions::server::raise_open_files_limit();
    let app = TestApp::builder(backend)
        .config(|c| c.server.header_timeout_seconds = NonZero::new(2).unwrap())
        .spawn()
        .await;
    let host = app.address.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for _ in 0..500 {
        let mut stream = TcpStream::connect(&host).await.expect("connect");
        stream
            .write_all(b"POST /public-api/sessions HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        stalled.push(stream);
    }
    let response = tokio::time::timeout(
        PATIENCE,
        app.mint(ACME_KEY, json!({"session_id": "s-acme-1"})),
    )
    .await
    .expect("a mint is answered while 500 heads stall");
    assert_eq!(response.status(), 200);
    for stream in stalled.iter_mut().take(20) {
        assert!(
            closed_by_server(stream).await,
            "a stalled connection stayed open"
        );
    }
}

/// An idle keep-alive connection is closed after the idle timeout.
async fn idle_keep_alive_connections_are_closed(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(|c| c.server.idle_timeout_seconds = NonZero::new(1).unwrap())
        .spawn()
        .await;
    let mut stream = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("connect");
    let request = mint_request(&app.address, ACME_KEY, &padded_body(0));
    stream.write_all(&request).await.expect("write");
    let response = read_response(&mut stream).await.expect("response");
    assert_eq!(response.status, 200);
    assert!(
        closed_by_server(&mut stream).await,
        "idle connection stayed open"
    );
}

/// Past `server.max_connections`, a new connection is answered 503 `too_many_connections` in the
/// envelope and closed; the open ones are unaffected.
async fn connections_over_the_cap_get_503_in_the_envelope(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(|c| c.server.max_connections = NonZero::new(3).unwrap())
        .spawn()
        .await;
    let host = app.address.trim_start_matches("http://").to_owned();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(TcpStream::connect(&host).await.expect("connect"));
    }
    // Let the server accept them before the one over the cap arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(&host).await.expect("connect");
    let request = mint_request(&app.address, ACME_KEY, &padded_body(0));
    let _ = extra.write_all(&request).await;
    let refused = read_response(&mut extra).await.expect("a 503 response");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.body["error"]["code"], "too_many_connections");
    assert_eq!(refused.header("connection"), Some("close"));
    assert!(refused.header("retry-after").is_some());

    // An open connection still mints.
    open[0].write_all(&request).await.expect("write");
    let response = read_response(&mut open[0]).await.expect("response");
    assert_eq!(response.status, 200, "{}", response.body);
}

/// Everything the server sends until it closes the connection (a reset after the response
/// counts as a close).
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(Ok(read)) = tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await {
        if read == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..read]);
    }
    received
}

/// A request head larger than `server.max_header_bytes` (32 KiB by default) is answered 431
/// and its connection closed, so an unauthenticated client cannot make a connection hold
/// hyper's default ~400 KB buffer; a head that fits is served, and so is the next connection.
async fn a_request_head_over_the_cap_gets_431(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let host = app.address.trim_start_matches("http://").to_owned();
    let head = |padding: usize| {
        format!(
            "GET /public-api/health/live HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
            "a".repeat(padding)
        )
    };

    let mut large = TcpStream::connect(&host).await.expect("connect");
    // Written in one go, as a client with an oversized cookie would.
    let _ = large.write_all(head(40 * 1024).as_bytes()).await;
    let answer = read_until_closed(&mut large).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431 "),
        "an oversized head was not answered 431: {:?}",
        answer.chars().take(200).collect::<String>()
    );

    // A head that fits (20 KB of header) is served.
    let mut fits = TcpStream::connect(&host).await.expect("connect");
    fits.write_all(head(20 * 1024).as_bytes())
        .await
        .expect("write");
    let response = read_response(&mut fits).await.expect("response");
    assert_eq!(response.status, 200, "{}", response.body);

    let response = app.mint(ACME_KEY, json!({"session_id": "s-acme-1"})).await;
    assert_eq!(response.status(), 200);
}

/// A connection from `from` (a loopback address of this host) to the server's address.
async fn connect_from(from: &str, host: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("address"))
        .expect("bind");
    socket
        .connect(host.parse().expect("server address"))
        .await
        .expect("connect")
}

/// One client address holding `server.max_connections_per_address` idle connections is
/// refused a further one (503 `too_many_connections`, as the global cap answers) while another
/// address is served; closing one of its connections frees its slot.
async fn one_address_cannot_take_every_connection(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(|c| c.server.max_connections_per_address = 3)
        .spawn()
        .await;
    let host = app.address.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.1", &host).await);
    }
    // Let the server accept them before the one over the cap arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let request = mint_request(&app.address, ACME_KEY, &padded_body(0));

    let mut extra = connect_from("127.0.0.1", &host).await;
    let _ = extra.write_all(&request).await;
    let refused = read_response(&mut extra).await.expect("a 503 response");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "too_many_connections");
    assert_eq!(refused.header("connection"), Some("close"));
    assert!(refused.header("retry-after").is_some());

    // Another address is served meanwhile.
    let mut other = connect_from("127.0.0.2", &host).await;
    other.write_all(&request).await.expect("write");
    let response = read_response(&mut other).await.expect("response");
    assert_eq!(response.status, 200, "{}", response.body);

    // Closing one of the three frees its slot.
    drop(held.pop());
    let mut served = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut again = connect_from("127.0.0.1", &host).await;
        let _ = again.write_all(&request).await;
        if let Ok(response) = read_response(&mut again).await {
            if response.status == 200 {
                served = true;
                break;
            }
            assert_eq!(response.status, 503, "{}", response.body);
        }
    }
    assert!(served, "the closed connection's slot was not given back");
}

/// On shutdown, a client holding a half-sent request does not keep the server alive past the
/// grace period.
async fn shutdown_has_a_deadline(backend: Backend) {
    let mut app = TestApp::builder(backend)
        .config(|c| {
            c.server.header_timeout_seconds = NonZero::new(3600).unwrap();
            c.server.shutdown_grace_seconds = 1;
        })
        .spawn()
        .await;
    let mut stalled = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("connect");
    stalled
        .write_all(b"POST /public-api/sessions HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = app.shut_down();
    assert!(
        tokio::time::timeout(PATIENCE, stopped).await.is_ok(),
        "the server did not stop within the grace period"
    );
    assert!(closed_by_server(&mut stalled).await);
}

backend_tests!(
    refusals_leave_keep_alive_connections_usable,
    an_unread_body_is_announced_with_connection_close,
    stalled_request_heads_are_cut_and_do_not_starve_mints,
    idle_keep_alive_connections_are_closed,
    connections_over_the_cap_get_503_in_the_envelope,
    a_request_head_over_the_cap_gets_431,
    one_address_cannot_take_every_connection,
    shutdown_has_a_deadline,
);
