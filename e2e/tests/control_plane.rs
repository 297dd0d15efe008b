//! The IpcLink CRD on a real kube-apiserver (with etcd), built from the Go module proxy.

use ipclink_core::CustomResourceExt;
use ipclink_testkit::control_plane::ControlPlane;

fn link_json(mode: &str) -> String {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/local/frames.yaml"
    ))
    .expect("example link")
    .replace("mode: \"0660\"", &format!("mode: \"{mode}\""));
    let link = &ipclink_core::parse_links("example", &yaml).expect("parse")[0];
    serde_json::to_string(link).expect("json")
}

#[test]
fn a_real_apiserver_serves_the_ipclink_crd() {
    let cp = ControlPlane::start();
    let crd = serde_json::to_string(&ipclink_core::IpcLink::crd()).expect("crd json");
    let (code, body) = cp
        .request(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            Some(&crd),
        )
        .expect("post crd");
    assert_eq!(code, 201, "{body}");
    let start = std::time::Instant::now();
    loop {
        let (_, body) = cp
            .request(
                "GET",
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/ipclinks.ipclink.dev",
                None,
            )
            .expect("get crd");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let established = v["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Established" && c["status"] == "True");
        if established {
            break;
        }
        assert!(
            start.elapsed().as_secs() < 60,
            "CRD not established: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (code, body) = cp
        .request(
            "POST",
            "/api/v1/namespaces",
            Some(r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"vision"}}"#),
        )
        .expect("namespace");
    assert_eq!(code, 201, "{body}");

    let path = "/apis/ipclink.dev/v1alpha1/namespaces/vision/ipclinks";
    let (code, body) = cp
        .request("POST", path, Some(&link_json("0660")))
        .expect("create link");
    assert_eq!(code, 201, "{body}");
    let (code, body) = cp
        .request("GET", &format!("{path}/frames"), None)
        .expect("get link");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["spec"]["channels"][0]["size"], "4Mi");
    assert_eq!(v["spec"]["semaphores"][1]["initial"], 8);

    // The operator's status write, through the status subresource.
    let (code, body) = cp
        .request(
            "PATCH",
            &format!("{path}/frames/status"),
            Some(
                r#"{"status":{"phase":"Ready","node":"node-1","channelCount":5,"memberCount":2}}"#,
            ),
        )
        .expect("status");
    assert_eq!(code, 200, "{body}");
    // What `kubectl get ipcl -n vision` prints: our printer columns.
    let table = std::process::Command::new("curl")
        .args(["-sk", "-H"])
        .arg(format!("Authorization: Bearer {}", cp.token))
        .args(["-H", "Accept: application/json;as=Table;v=v1;g=meta.k8s.io"])
        .arg(format!("{}{path}", cp.url))
        .output()
        .expect("curl");
    let t: serde_json::Value = serde_json::from_slice(&table.stdout).expect("table json");
    // `-o wide` adds the columns of priority 1: a node-scoped link's node count.
    let columns = |priority: i64| -> Vec<&str> {
        t["columnDefinitions"]
            .as_array()
            .expect("columns")
            .iter()
            .filter(|c| c["priority"].as_i64().unwrap_or(0) == priority)
            .filter_map(|c| c["name"].as_str())
            .collect()
    };
    assert_eq!(
        columns(0),
        ["Name", "Phase", "Node", "Channels", "Members", "Age"]
    );
    assert_eq!(columns(1), ["Nodes"]);
    // The cells of every column, in the definitions' order (no node count: scope Link).
    assert_eq!(
        t["rows"][0]["cells"],
        serde_json::json!([
            "frames",
            "Ready",
            "node-1",
            null,
            5,
            2,
            t["rows"][0]["cells"][6]
        ])
    );

    // The schema refuses at admission what it can say: a setuid mode.
    let (code, body) = cp
        .request(
            "POST",
            path,
            Some(&link_json("4777").replace("\"frames\",\"namespace\"", "\"bad\",\"namespace\"")),
        )
        .expect("bad link");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("mode"), "{body}");

    // Sizes: what the validator refuses by its form is refused at admission too, naming
    // the field (kube's rewrite of an anyOf would let "lots" and "-1Mi" through); nothing
    // is stored.
    let base: serde_json::Value = serde_json::from_str(&link_json("0660")).expect("json");
    let named = |name: &str, pointer: &str, value: serde_json::Value| {
        let mut v = base.clone();
        v["metadata"]["name"] = name.into();
        *v.pointer_mut(pointer).expect("field") = value;
        v.to_string()
    };
    let (limit, size) = ("/spec/sizeLimit", "/spec/channels/0/size");
    for (name, pointer, value) in [
        ("lots", limit, serde_json::json!("lots")),
        ("neg-string", limit, serde_json::json!("-1Mi")),
        ("zero", limit, serde_json::json!(0)),
        ("negative", limit, serde_json::json!(-1)),
        ("too-big", limit, serde_json::json!(1i64 << 41)),
        ("long", limit, serde_json::json!("1".repeat(33))),
        ("size-neg", size, serde_json::json!("-1Mi")),
        ("size-int-neg", size, serde_json::json!(-1)),
    ] {
        let field = if pointer == limit {
            "spec.sizeLimit"
        } else {
            "spec.channels[0].size"
        };
        let (code, body) = cp
            .request("POST", path, Some(&named(name, pointer, value)))
            .expect("post");
        assert_eq!(code, 422, "{name}: {body}");
        assert!(
            body.contains(field),
            "{name}: the answer names {field}: {body}"
        );
        let (code, _) = cp
            .request("GET", &format!("{path}/{name}"), None)
            .expect("get");
        assert_eq!(code, 404, "{name} was stored");
    }
    // And what it accepts stays accepted: a quantity, a whole number, a decimal one.
    for (name, size) in [
        ("q", serde_json::json!("2Mi")),
        ("n", serde_json::json!(4194304)),
        ("d", serde_json::json!("1.5Mi")),
    ] {
        let body = named(name, limit, size);
        let (code, text) = cp.request("POST", path, Some(&body)).expect("post");
        assert_eq!(code, 201, "{name}: {text}");
    }
}
