//! The node plugin's metrics endpoint with Kubernetes authentication, against a real API
//! server: HTTPS only; `/metrics` and `/v1/links` answer 401 without a valid token, 403
//! to a ServiceAccount without the right, 200 to one bound to the reader role (also
//! through the header the API server's pod proxy leaves alone); health stays open, also
//! to plain HTTP on the same port; plain HTTP metrics are refused off loopback.

mod common;

use std::path::Path;
use std::process::Command;

use common::{BIN, Plugin, Unmounter, require_root};
use ipclink_testkit::control_plane::ControlPlane;
use ipclink_testkit::free_port;
use ipclink_testkit::http::curl;
use serde_json::json;

/// Waits until the plugin's metrics endpoint on `port` answers `/healthz` (its CSI
/// socket, which `Plugin::start_with` waits for, is bound before it).
fn wait_serving(port: u16, plugin: &Plugin) {
    let start = std::time::Instant::now();
    while curl(&format!("https://127.0.0.1:{port}/healthz"), &[]).0 != 200 {
        assert!(
            start.elapsed().as_secs() < 20,
            "no metrics endpoint\n{}",
            plugin.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// (what, extra curl arguments, path, headers, the codes that may answer).
type Hostile<'a> = (&'a str, Vec<&'a str>, &'a str, Vec<String>, Vec<u16>);

#[test]
fn metrics_and_links_need_an_authorized_token() {
    require_root();
    let cp = ControlPlane::start();
    // The reader role the chart makes, bound to one ServiceAccount only.
    let reader = cp.metrics_reader("default", "prometheus");
    let nosy = cp.metrics_token("default", "nosy");
    // The same reader's token for the API server: not accepted (a node plugin never
    // holds a token that could act on the API server) unless asked for.
    let api_token = cp.service_account_token("default", "prometheus");

    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let links = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node-links");
    let (port, probes) = (free_port(), free_port());
    let plugin = Plugin::start_with(
        "node",
        dir.path(),
        &[
            "--links-dir",
            links.to_str().expect("utf-8"),
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-auth",
            "kubernetes",
            "--probe-listen",
            &format!("127.0.0.1:{probes}"),
        ],
        &[("KUBECONFIG", cp.kubeconfig.as_os_str())],
    );
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let bearer = |t: &str| vec![format!("Authorization: Bearer {t}")];
    wait_serving(port, &plugin);

    for path in ["/metrics", "/v1/links"] {
        let (code, body) = curl(&url(path), &[]);
        assert_eq!(code, 401, "{path} without a token: {body}");
        assert!(
            !body.contains("ipclink_") && body.contains("bearer token"),
            "{body}"
        );
        let (code, body) = curl(&url(path), &bearer("not-a-token"));
        assert_eq!(code, 401, "{path} with a forged token: {body}");
        let (code, body) = curl(&url(path), &bearer(&api_token));
        assert_eq!(code, 401, "{path} with a token for the API server: {body}");
        let (code, body) = curl(&url(path), &bearer(&cp.token));
        assert_eq!(code, 401, "{path} with the admin's static token: {body}");
        let (code, body) = curl(&url(path), &bearer(&nosy));
        assert_eq!(code, 403, "{path} without the right: {body}");
        assert!(
            body.contains("system:serviceaccount:default:nosy may not get"),
            "{body}"
        );
        assert!(!body.contains("ipclink_"), "{body}");
    }
    let (code, body) = curl(&url("/metrics"), &bearer(&reader));
    assert_eq!(code, 200, "{body}\n{}", plugin.log());
    assert!(
        body.contains("# TYPE ipclink_channel_queue_bytes gauge"),
        "{body}"
    );
    let (code, body) = curl(&url("/v1/links"), &bearer(&reader));
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("{\"links\":"), "{body}");
    // Behind the API server's pod proxy the token comes in its own header.
    let proxied = vec![format!("X-Ipclink-Authorization: Bearer {reader}")];
    assert_eq!(curl(&url("/v1/links"), &proxied).0, 200);
    // Health says nothing about tenants: open, on both listeners.
    assert_eq!(curl(&url("/healthz"), &[]).0, 200);
    assert_eq!(
        curl(&format!("http://127.0.0.1:{probes}/readyz"), &[]).0,
        200
    );
    // Plain HTTP on the TLS port gets health (probes still pointed there) and nothing
    // else, token or not: no token travels in the clear to be accepted.
    let plain = |path: &str| format!("http://127.0.0.1:{port}{path}");
    assert_eq!(curl(&plain("/healthz"), &[]).0, 200);
    for path in ["/metrics", "/v1/links"] {
        let (code, body) = curl(&plain(path), &bearer(&reader));
        assert_eq!(code, 404, "{path} over plain HTTP: {body}");
        assert!(!body.contains("ipclink_"), "{body}");
    }

    // Hostile requests: each gets its code, no tenant data, and the endpoint keeps
    // serving (it holds no state a request could change; the plugin holds no link).
    let gone = cp.metrics_token("default", "gone");
    let (code, text) = cp
        .request(
            "DELETE",
            "/api/v1/namespaces/default/serviceaccounts/gone",
            None,
        )
        .expect("delete");
    assert_eq!(code, 200, "{text}");
    let huge = dir.path().join("huge-header");
    std::fs::write(
        &huge,
        format!("Authorization: Bearer {}\n", "x".repeat(1 << 20)),
    )
    .expect("header file");
    let huge_arg = format!("@{}", huge.display());
    let many: Vec<String> = (0..150).map(|i| format!("X-Filler-{i}: {i}")).collect();
    let with = |extra: &[String]| [bearer(&reader), extra.to_vec()].concat();
    let hostile: Vec<Hostile> = vec![
        (
            "POST /metrics",
            vec!["-X", "POST"],
            "/metrics",
            bearer(&reader),
            vec![405],
        ),
        (
            "DELETE /v1/links",
            vec!["-X", "DELETE"],
            "/v1/links",
            bearer(&reader),
            vec![405],
        ),
        (
            "PUT /v1/links",
            vec!["-X", "PUT"],
            "/v1/links",
            vec![],
            vec![401, 405],
        ),
        (
            "dot-dot path",
            vec!["--path-as-is"],
            "/metrics/../v1/links",
            vec![],
            vec![401, 404],
        ),
        (
            "unknown path",
            vec![],
            "/debug/pprof",
            bearer(&reader),
            vec![401, 403, 404],
        ),
        (
            "query string, no token",
            vec![],
            "/metrics?format=json",
            vec![],
            vec![401],
        ),
        (
            "token of a deleted ServiceAccount",
            vec![],
            "/metrics",
            bearer(&gone),
            vec![401],
        ),
        (
            "Basic credentials",
            vec![],
            "/metrics",
            vec!["Authorization: Basic YWRtaW46YWRtaW4=".into()],
            vec![401],
        ),
        (
            "proxied Basic",
            vec![],
            "/v1/links",
            vec![format!("X-Ipclink-Authorization: Basic {reader}")],
            vec![401],
        ),
        (
            "bad token first, good one proxied",
            vec![],
            "/v1/links",
            [bearer("forged"), proxied.clone()].concat(),
            vec![401],
        ),
        (
            "token with trailing words",
            vec![],
            "/metrics",
            vec![format!("Authorization: Bearer {reader} extra")],
            vec![401],
        ),
        (
            "150 headers",
            vec![],
            "/metrics",
            with(&many),
            vec![431, 400],
        ),
        (
            // hyper drops a connection whose head outgrows its buffer: no answer.
            "1 MiB token",
            vec!["-H", &huge_arg],
            "/metrics",
            vec![],
            vec![431, 400, 0],
        ),
        (
            "plain HTTP with a token",
            vec![],
            "PLAIN/v1/links",
            bearer(&reader),
            vec![404],
        ),
    ];
    for (what, args, path, headers, codes) in &hostile {
        let target = match path.strip_prefix("PLAIN") {
            Some(p) => format!("http://127.0.0.1:{port}{p}"),
            None => url(path),
        };
        let (code, body) = ipclink_testkit::http::curl_with(args, &target, headers);
        assert!(codes.contains(&code), "{what}: {code} {body}");
        assert!(
            !body.contains("ipclink_") && !body.contains("\"links\""),
            "{what}: {body}"
        );
        assert_eq!(
            curl(&url("/healthz"), &[]).0,
            200,
            "{what}: the endpoint still serves"
        );
    }
    // Bytes that are neither TLS nor HTTP get 400; a client that sends nothing is
    // dropped after the header-read timeout (5 s).
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"\x01\x02garbage\r\n\r\n").expect("write");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
        let silent = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        silent
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let start = std::time::Instant::now();
        let n = (&silent)
            .read(&mut [0u8; 16])
            .expect("closed, not timed out");
        assert_eq!(n, 0, "a silent client is dropped");
        assert!(start.elapsed() < std::time::Duration::from_secs(9));
    }
    let (code, body) = curl(&url("/v1/links"), &bearer(&reader));
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("{\"links\":[]"),
        "no link was made: {body}"
    );

    // The operator's client checks certificates: the one this plugin made at start is
    // refused, before any token is sent.
    let token = dir.path().join("token");
    std::fs::write(&token, &reader).expect("token");
    let ca = ipclink_runtime::tls::issue(&["ipclink-node-metrics.ipclink-system.svc".into()])
        .expect("a CA");
    let secure = ipclink_runtime::client::Secure {
        tls: ipclink_runtime::tls::client_config(&ipclink_runtime::tls::ServerCheck::CaPem(
            ca.ca.clone().into_bytes(),
        ))
        .expect("tls"),
        token_file: Some(token.clone()),
        server_name: Some("ipclink-node-metrics.ipclink-system.svc".into()),
    };
    let rt = common::rt();
    let e = rt
        .block_on(ipclink_runtime::client::links(
            &format!("https://127.0.0.1:{port}"),
            Some(&secure),
            std::time::Duration::from_secs(10),
        ))
        .expect_err("a certificate no CA vouches for");
    assert!(e.to_string().contains("certificate"), "{e}");
    drop(plugin);

    // With a certificate from a CA (as cert-manager makes one, naming the Service), the
    // operator's client checks it: the right CA and name pass; the pod's address, which
    // the certificate does not name, or another CA, do not.
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).expect("pki");
    let service = "ipclink-node-metrics.ipclink-system.svc";
    std::fs::write(pki.join("ext"), format!("subjectAltName=DNS:{service}\n")).expect("ext");
    for script in [
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -subj /CN=ipclink-test-ca -days 1",
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other.key -out other.crt -subj /CN=other-ca -days 1",
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout tls.key -out tls.csr -subj /CN=node-metrics",
        "openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out tls.crt -days 1 -extfile ext",
    ] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&pki)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let port = free_port();
    let plugin = Plugin::start_with(
        "node",
        &dir.path().join("second"),
        &[
            "--links-dir",
            links.to_str().expect("utf-8"),
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-auth",
            "kubernetes",
            "--tls-cert-file",
            pki.join("tls.crt").to_str().expect("utf-8"),
            "--tls-key-file",
            pki.join("tls.key").to_str().expect("utf-8"),
        ],
        &[("KUBECONFIG", cp.kubeconfig.as_os_str())],
    );
    let checked = |ca: &str, name: Option<&str>| ipclink_runtime::client::Secure {
        tls: ipclink_runtime::tls::client_config(&ipclink_runtime::tls::ServerCheck::Ca(
            pki.join(ca),
        ))
        .expect("tls"),
        token_file: Some(token.clone()),
        server_name: name.map(str::to_owned),
    };
    wait_serving(port, &plugin);
    let ask = |secure: &ipclink_runtime::client::Secure| {
        rt.block_on(ipclink_runtime::client::links(
            &format!("https://127.0.0.1:{port}"),
            Some(secure),
            std::time::Duration::from_secs(10),
        ))
    };
    ask(&checked("ca.crt", Some(service))).expect("the CA and the Service name");
    let e = ask(&checked("ca.crt", None)).expect_err("the certificate does not name the address");
    assert!(e.to_string().contains("certificate"), "{e}");
    let e = ask(&checked("other.crt", Some(service))).expect_err("another CA");
    assert!(e.to_string().contains("certificate"), "{e}");
    drop(plugin);

    // Without authentication, metrics may only be served on loopback.
    let out = Command::new(BIN)
        .args(["node", "--node-id", "n", "--endpoint"])
        .arg(format!("unix://{}/x.sock", dir.path().display()))
        .args(["--links-dir", links.to_str().expect("utf-8")])
        .args(["--metrics-listen", &format!("0.0.0.0:{}", free_port())])
        .args(["--metrics-auth", "none"])
        .env("IPCLINK_STATE_DIR", dir.path().join("s"))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--metrics-auth none") && err.contains("loopback"),
        "{err}"
    );
}

/// The API server's count of TokenReviews it was asked for.
fn token_reviews(cp: &ControlPlane) -> f64 {
    let (code, text) = cp
        .request("GET", "/metrics", None)
        .expect("apiserver metrics");
    assert_eq!(code, 200);
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains(r#"resource="tokenreviews""#)
                && l.contains(r#"verb="POST""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Strangers' tokens cost the node plugin no memory and the reader nothing: 2,000
/// requests with 400 KB tokens (each new), then 2,000 with 9 KiB ones (over the 8 KiB
/// a token may have: no TokenReview at all), then 2,000 with 4 KiB ones (reviewed, a
/// few at a time), while an authorized reader scrapes every 100 ms.
#[test]
fn strangers_tokens_cost_no_memory_and_the_reader_keeps_getting_200() {
    require_root();
    let cp = ControlPlane::start();
    let reader = cp.metrics_reader("default", "prometheus");
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let links = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node-links");
    let port = free_port();
    let plugin = Plugin::start_with(
        "node",
        dir.path(),
        &[
            "--links-dir",
            links.to_str().expect("utf-8"),
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-auth",
            "kubernetes",
        ],
        &[("KUBECONFIG", cp.kubeconfig.as_os_str())],
    );
    wait_serving(port, &plugin);
    let pid = plugin.pid().expect("running");
    let bearer = vec![format!("Authorization: Bearer {reader}")];
    assert_eq!(
        curl(&format!("https://127.0.0.1:{port}/metrics"), &bearer).0,
        200
    );

    for (size, answers, reviewed) in [
        (400_000, &["431", "0"][..], false),
        (9 << 10, &["401"][..], false),
        (4 << 10, &["401", "429", "503"][..], true),
    ] {
        let reviews = token_reviews(&cp);
        let flood = ipclink_testkit::http::flood_tokens(port, pid, 2000, size, 16, &reader);
        let total: u64 = flood.strangers.values().sum();
        assert_eq!(total, 2000, "{size}: {flood:?}");
        assert!(
            flood
                .strangers
                .keys()
                .all(|k| answers.contains(&k.as_str())),
            "{size}-byte tokens: {flood:?}"
        );
        assert!(
            flood.reader.keys().all(|&c| c == 200) && flood.reader.values().sum::<u64>() > 0,
            "{size}-byte tokens: the reader got {:?}\n{}",
            flood.reader,
            plugin.log()
        );
        let growth = flood.rss_peak.saturating_sub(flood.rss_before);
        assert!(
            growth <= 16 << 20,
            "{size}-byte tokens: RSS grew by {growth} bytes ({flood:?})"
        );
        let asked = token_reviews(&cp) - reviews;
        if reviewed {
            assert!(asked > 0.0, "{size}-byte tokens were never reviewed");
        } else {
            // The reader's verdict is cached: nothing new was reviewed at all.
            assert!(asked <= 2.0, "{size}-byte tokens: {asked} TokenReviews");
        }
        eprintln!(
            "{size}-byte tokens: {:?}; reader {:?}; RSS {} -> {} KiB; {asked} reviews",
            flood.strangers,
            flood.reader,
            flood.rss_before >> 10,
            flood.rss_peak >> 10
        );
    }
}

/// With --metrics-tls-secret the plugin serves a certificate made at start until the
/// release's Secret has one, then that one: a client checking the Secret's CA reads it
/// from then on. With --metrics-accept-api-audience a token for the API server passes
/// too.
#[test]
fn the_plugin_serves_the_release_certificate_once_its_secret_holds_one() {
    require_root();
    let cp = ControlPlane::start();
    cp.metrics_reader("default", "prometheus");
    let reader_api = cp.service_account_token("default", "prometheus");
    cp.create(
        "/api/v1/namespaces/default/secrets",
        &json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "metrics-tls"}})
        .to_string(),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let links = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node-links");
    let port = free_port();
    let plugin = Plugin::start_with(
        "node",
        dir.path(),
        &[
            "--links-dir",
            links.to_str().expect("utf-8"),
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-auth",
            "kubernetes",
            "--metrics-tls-secret",
            "default/metrics-tls",
            "--metrics-accept-api-audience",
        ],
        &[("KUBECONFIG", cp.kubeconfig.as_os_str())],
    );
    wait_serving(port, &plugin);
    let service = "ipclink-node-metrics.ipclink-system.svc";
    let issued = ipclink_runtime::tls::issue(&[service.into()]).expect("issue");
    let token = dir.path().join("token");
    std::fs::write(&token, &reader_api).expect("token");
    let secure = ipclink_runtime::client::Secure {
        tls: ipclink_runtime::tls::client_config(&ipclink_runtime::tls::ServerCheck::CaPem(
            issued.ca.clone().into_bytes(),
        ))
        .expect("tls"),
        token_file: Some(token),
        server_name: Some(service.into()),
    };
    let rt = common::rt();
    let ask = || {
        rt.block_on(ipclink_runtime::client::links(
            &format!("https://127.0.0.1:{port}"),
            Some(&secure),
            std::time::Duration::from_secs(10),
        ))
    };
    let e = ask().expect_err("the Secret is empty: a certificate made at start");
    assert!(e.to_string().contains("certificate"), "{e}");
    // The operator's part, by hand: fill the Secret.
    let b64 = |t: &str| ipclink_testkit::base64(t.as_bytes());
    let (code, text) = cp
        .request(
            "PUT",
            "/api/v1/namespaces/default/secrets/metrics-tls",
            Some(
                &json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": "metrics-tls"},
                    "data": {"ca.crt": b64(&issued.ca), "tls.crt": b64(&issued.cert),
                        "tls.key": b64(&issued.key)}})
                .to_string(),
            ),
        )
        .expect("fill");
    assert_eq!(code, 200, "{text}");
    let start = std::time::Instant::now();
    let report = loop {
        match ask() {
            Ok(r) => break r,
            Err(e) => {
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(30),
                    "the plugin never served the Secret's certificate: {e}\n{}",
                    plugin.log()
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    };
    assert!(report.links.is_empty());
}
