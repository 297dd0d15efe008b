//! The Docker volume plugin protocol, spoken to a running `ipclink-sidecar volume-plugin`
//! over its Unix socket exactly as an engine would: the whole lifecycle, every hostile
//! input (each a JSON error, with the state file, the tree under the root and the mount
//! table unchanged), and a `kill -9` + restart that keeps the data and the mounts.
//! Needs root (one tmpfs per volume).

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipclink_testkit::mounts::{Unmounter, snapshot};

mod common;

use common::BIN;
use common::plugin::{Plugin, err_of, read_answer, tmp};

const CREATE: &str = r#"{"Name":"proj_frames","Opts":{"shm":"frames:64Ki","fifo":"events","socket":"control:0770","semaphores":"slots:8,frame-ready","abi":"musl","owner":"1000:1000","mode":"0660","size":"4Mi"}}"#;

#[test]
fn lifecycle_hostile_inputs_and_restart() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (a tmpfs per volume); run it through scripts/test"
    );
    let dir = tmp();
    let _unmount = Unmounter(dir.path().to_owned());
    let mut p = Plugin::start(dir.path());

    assert_eq!(
        p.call("/Plugin.Activate", "").1,
        serde_json::json!({"Implements": ["VolumeDriver"]})
    );
    assert_eq!(
        p.call("/VolumeDriver.Capabilities", "{}").1["Capabilities"]["Scope"],
        "local"
    );
    // The engine asks before it creates: an unknown volume must be an error.
    let (status, body) = p.call("/VolumeDriver.Get", r#"{"Name":"proj_frames"}"#);
    assert_eq!(status, 404, "{body}");
    assert!(err_of(&body).contains("no ipclink volume"), "{body}");

    let (status, body) = p.call("/VolumeDriver.Create", CREATE);
    assert_eq!((status, err_of(&body).as_str()), (200, ""), "{body}");
    // Create again with the same options is a no-op.
    assert_eq!(p.call("/VolumeDriver.Create", CREATE).0, 200);
    let (_, got) = p.call("/VolumeDriver.Get", r#"{"Name":"proj_frames"}"#);
    let mountpoint = PathBuf::from(got["Volume"]["Mountpoint"].as_str().expect("Mountpoint"));
    assert!(mountpoint.starts_with(&p.root), "{got}");
    for (file, mode) in [
        ("frames", 0o100660),
        ("events", 0o010660),
        ("control", 0o040770),
        ("slots", 0o100660),
        ("frame-ready", 0o100660),
    ] {
        let m = std::fs::metadata(mountpoint.join(file)).expect(file);
        assert_eq!((m.mode(), m.uid(), m.gid()), (mode, 1000, 1000), "{file}");
    }
    let (_, listed) = p.call("/VolumeDriver.List", "{}");
    assert_eq!(
        listed["Volumes"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );

    let mount = r#"{"Name":"proj_frames","ID":"c1"}"#;
    let (status, body) = p.call("/VolumeDriver.Mount", mount);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Mountpoint"], got["Volume"]["Mountpoint"]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(mountpoint.join("frames"))
        .and_then(|mut f| f.write_all(b"kept across a plugin crash"))
        .expect("write into the region");

    // Hostile inputs: each a JSON error naming what is wrong, and nothing changed.
    let big = format!("{{\"Name\":\"{}\"}}", "a".repeat(300));
    let deep = format!("{{\"Name\":{}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
    let opts = |extra: &str| format!(r#"{{"Name":"other","Opts":{{"fifo":"events",{extra}}}}}"#);
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "non-JSON",
            "/VolumeDriver.Create",
            "Name=x".into(),
            400,
            "request body",
        ),
        (
            "truncated",
            "/VolumeDriver.Create",
            r#"{"Name":"x""#.into(),
            400,
            "EOF",
        ),
        (
            "trailing garbage",
            "/VolumeDriver.Create",
            r#"{"Name":"x"} junk"#.into(),
            400,
            "trailing",
        ),
        (
            "deep nesting",
            "/VolumeDriver.Create",
            deep,
            400,
            "request body",
        ),
        (
            "missing Name",
            "/VolumeDriver.Create",
            r#"{"Opts":{}}"#.into(),
            400,
            "missing field `Name`",
        ),
        (
            "null Name",
            "/VolumeDriver.Create",
            r#"{"Name":null}"#.into(),
            400,
            "invalid type: null",
        ),
        (
            "unknown field",
            "/VolumeDriver.Create",
            r#"{"Name":"x","Bogus":1}"#.into(),
            400,
            "unknown field `Bogus`",
        ),
        (
            "name with /",
            "/VolumeDriver.Create",
            r#"{"Name":"a/b"}"#.into(),
            400,
            "Name: \"a/b\"",
        ),
        (
            "name ..",
            "/VolumeDriver.Create",
            r#"{"Name":".."}"#.into(),
            400,
            "Name: \"..\"",
        ),
        (
            "name with NUL",
            "/VolumeDriver.Create",
            r#"{"Name":"a\u0000b"}"#.into(),
            400,
            "Name: ",
        ),
        (
            "leading -",
            "/VolumeDriver.Create",
            r#"{"Name":"-x"}"#.into(),
            400,
            "Name: \"-x\"",
        ),
        ("300 chars", "/VolumeDriver.Create", big, 400, "Name: "),
        (
            "unknown option",
            "/VolumeDriver.Create",
            opts(r#""colour":"red""#),
            400,
            "Opts: unknown option \"colour\"",
        ),
        (
            "size=-1",
            "/VolumeDriver.Create",
            opts(r#""size":"-1""#),
            400,
            "Opts.size",
        ),
        (
            "size=abc",
            "/VolumeDriver.Create",
            opts(r#""size":"abc""#),
            400,
            "Opts.size",
        ),
        (
            "size=1e20",
            "/VolumeDriver.Create",
            opts(r#""size":"1e20""#),
            400,
            "Opts.size",
        ),
        (
            "mode=4777",
            "/VolumeDriver.Create",
            opts(r#""mode":"4777""#),
            400,
            "Opts.mode",
        ),
        (
            "no objects",
            "/VolumeDriver.Create",
            r#"{"Name":"other"}"#.into(),
            400,
            "Opts: declare the link",
        ),
        (
            "create with other options",
            "/VolumeDriver.Create",
            r#"{"Name":"proj_frames","Opts":{"fifo":"x"}}"#.into(),
            409,
            "exists with different options",
        ),
        (
            "mount without create",
            "/VolumeDriver.Mount",
            r#"{"Name":"ghost","ID":"c1"}"#.into(),
            404,
            "no ipclink volume \"ghost\"",
        ),
        (
            "unmount unknown id",
            "/VolumeDriver.Unmount",
            r#"{"Name":"proj_frames","ID":"nobody"}"#.into(),
            404,
            "has not mounted",
        ),
        (
            "remove while mounted",
            "/VolumeDriver.Remove",
            r#"{"Name":"proj_frames"}"#.into(),
            409,
            "is mounted by 1 caller(s) (c1)",
        ),
        (
            "unknown endpoint",
            "/VolumeDriver.Explode",
            "{}".into(),
            404,
            "no endpoint",
        ),
        (
            "mount id with /",
            "/VolumeDriver.Mount",
            r#"{"Name":"proj_frames","ID":"../x"}"#.into(),
            400,
            "ID: ",
        ),
        (
            "arguments to List",
            "/VolumeDriver.List",
            r#"{"Name":"x"}"#.into(),
            400,
            "takes no arguments",
        ),
    ];
    let before = snapshot(&p.root);
    assert!(before.len() > 5, "{before:#?}");
    for (what, endpoint, body, status, needle) in &cases {
        let (got_status, got) = p.call(endpoint, body);
        assert_eq!(got_status, *status, "{what}: {got}");
        let err = err_of(&got);
        assert!(err.contains(needle), "{what}: {err:?} lacks {needle:?}");
        assert_eq!(snapshot(&p.root), before, "{what} changed something");
    }
    // Wrong method.
    let (status, got) =
        p.raw("GET /VolumeDriver.List HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 405, "{got}");
    assert!(err_of(&got).contains("uses POST"), "{got}");
    // A 100 MB body is refused without being read.
    let s = UnixStream::connect(&p.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let writer = s.try_clone().expect("clone");
    let feeder = std::thread::spawn(move || {
        let mut w = writer;
        let head = format!(
            "POST /VolumeDriver.Create HTTP/1.1\r\nHost: p\r\nContent-Length: {}\r\n\r\n{{\"Name\":\"",
            100 * 1024 * 1024
        );
        if w.write_all(head.as_bytes()).is_err() {
            return 0;
        }
        let chunk = vec![b'a'; 1 << 20];
        let mut sent = 0usize;
        while sent < 100 * (1 << 20) && w.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let (status, got) = read_answer(s);
    let sent = feeder.join().expect("feeder");
    assert_eq!(status, 413, "{got}");
    assert!(err_of(&got).contains("larger than 65536 bytes"), "{got}");
    assert!(sent < 100 * (1 << 20), "the plugin read all {sent} bytes");
    assert_eq!(snapshot(&p.root), before, "the big body changed something");
    assert!(
        p.call("/Plugin.Activate", "{}").0 == 200,
        "plugin still serves"
    );

    // kill -9 while the volume is mounted: the data and the mount survive, and the
    // restarted plugin knows the caller.
    p.kill9();
    assert_eq!(
        std::fs::read(mountpoint.join("frames"))
            .expect("read")
            .get(..26),
        Some(&b"kept across a plugin crash"[..])
    );
    drop(p);
    let p = Plugin::start(dir.path());
    assert_eq!(snapshot(&p.root), before, "a restart changed something");
    let (status, body) = p.call("/VolumeDriver.Remove", r#"{"Name":"proj_frames"}"#);
    assert_eq!(status, 409, "the restarted plugin forgot the mount: {body}");
    // Docker asks again for the mounts of the containers it live-restores: the same
    // caller mounting again gets the same mountpoint and counts once.
    let (status, body) = p.call("/VolumeDriver.Mount", mount);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["Mountpoint"].as_str(),
        Some(&*mountpoint.to_string_lossy())
    );
    assert_eq!(
        snapshot(&p.root),
        before,
        "a repeated mount changed something"
    );
    assert_eq!(
        std::fs::read(mountpoint.join("frames"))
            .expect("read")
            .get(..26),
        Some(&b"kept across a plugin crash"[..])
    );
    let (status, body) = p.call("/VolumeDriver.Unmount", mount);
    assert_eq!(status, 200, "{body}");
    let (status, body) = p.call("/VolumeDriver.Remove", r#"{"Name":"proj_frames"}"#);
    assert_eq!(status, 200, "{body}");
    assert!(!mountpoint.exists(), "the link directory is gone");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        !mounts.contains(&p.root.display().to_string()),
        "no tmpfs is left"
    );
    assert_eq!(
        p.call("/VolumeDriver.Get", r#"{"Name":"proj_frames"}"#).0,
        404
    );
    drop(p);
}

#[test]
fn link_file_volumes_and_a_busy_socket() {
    assert!(nix::unistd::Uid::effective().is_root(), "needs root");
    let dir = tmp();
    let _unmount = Unmounter(dir.path().to_owned());
    let file = dir.path().join("link.yaml");
    std::fs::write(
        &file,
        "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: { name: anything }\nspec:\n  channels:\n    - { name: events, kind: fifo, mode: \"0600\" }\n  semaphores:\n    - { name: ready, initial: 3 }\n",
    )
    .expect("write link");
    let p = Plugin::start(dir.path());
    let body = format!(
        r#"{{"Name":"Mixed.Case_vol","Opts":{{"link":"{}"}}}}"#,
        file.display()
    );
    let (status, got) = p.call("/VolumeDriver.Create", &body);
    assert_eq!(status, 200, "{got}");
    let (_, got) = p.call("/VolumeDriver.Path", r#"{"Name":"Mixed.Case_vol"}"#);
    let mp = PathBuf::from(got["Mountpoint"].as_str().expect("Mountpoint"));
    assert!(
        mp.join("events").exists() && mp.join("sem.ready").exists(),
        "{got}"
    );
    let key = mp.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    assert_eq!(key, "mixed-case-vol");
    // Another name for the same link is refused.
    let (status, got) = p.call(
        "/VolumeDriver.Create",
        r#"{"Name":"mixed_case.VOL","Opts":{"fifo":"x"}}"#,
    );
    assert_eq!(status, 409, "{got}");
    assert!(
        err_of(&got).contains("which volume \"Mixed.Case_vol\" uses"),
        "{got}"
    );

    // A link file combined with inline options, or one that is invalid, is refused.
    let before = snapshot(&p.root);
    let combined = format!(
        r#"{{"Name":"v2","Opts":{{"link":"{}","fifo":"x"}}}}"#,
        file.display()
    );
    let (status, got) = p.call("/VolumeDriver.Create", &combined);
    assert_eq!(status, 400);
    assert!(
        err_of(&got).starts_with("Opts.link: cannot be combined"),
        "{got}"
    );
    std::fs::write(
        dir.path().join("bad.yaml"),
        "kind: IpcLink\nspec: { channels: [ { name: x, kind: pipe } ] }\n",
    )
    .expect("write");
    let bad = format!(
        r#"{{"Name":"v3","Opts":{{"link":"{}"}}}}"#,
        dir.path().join("bad.yaml").display()
    );
    let (status, got) = p.call("/VolumeDriver.Create", &bad);
    assert_eq!(status, 400);
    assert!(err_of(&got).contains("spec.channels[0].kind"), "{got}");
    assert_eq!(snapshot(&p.root), before);

    // A second plugin on the same socket refuses to start and leaves the first serving.
    let out = Command::new(BIN)
        .args(["volume-plugin", "--socket"])
        .arg(&p.socket)
        .arg("--root")
        .arg(dir.path().join("other"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another plugin is serving it"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.call("/Plugin.Activate", "{}").0, 200);
    let (status, got) = p.call("/VolumeDriver.Remove", r#"{"Name":"Mixed.Case_vol"}"#);
    assert_eq!(status, 200, "{got}");
    drop(p);
}

#[test]
fn link_files_are_read_only_from_the_link_directory() {
    assert!(nix::unistd::Uid::effective().is_root(), "needs root");
    let dir = tmp();
    let _unmount = Unmounter(dir.path().to_owned());
    let links = dir.path().join("links");
    std::fs::create_dir(&links).expect("links dir");
    let good = "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: { name: anything }\nspec:\n  channels:\n    - { name: events, kind: fifo }\n";
    std::fs::write(links.join("good.yaml"), good).expect("write");
    std::fs::create_dir(links.join("sub")).expect("sub");
    std::fs::write(links.join("sub/nested.yaml"), good).expect("write");
    let p = Plugin::start_with_links(dir.path(), &links);

    // Another volume, mounted, that every refusal below must leave alone.
    let (status, got) = p.call(
        "/VolumeDriver.Create",
        r#"{"Name":"bystander","Opts":{"fifo":"events"}}"#,
    );
    assert_eq!(status, 200, "{got}");
    let (status, got) = p.call("/VolumeDriver.Mount", r#"{"Name":"bystander","ID":"c1"}"#);
    assert_eq!(status, 200, "{got}");
    let bystander = PathBuf::from(got["Mountpoint"].as_str().expect("Mountpoint"));

    // Accepted: a name relative to the directory, and an absolute path inside it.
    for (name, link) in [
        ("by-name", "good.yaml".to_owned()),
        (
            "by-path",
            links.join("sub/nested.yaml").display().to_string(),
        ),
    ] {
        let body = serde_json::json!({"Name": name, "Opts": {"link": link}}).to_string();
        let (status, got) = p.call("/VolumeDriver.Create", &body);
        assert_eq!(status, 200, "{link}: {got}");
    }

    // Hostile files, each refused with the option named and nothing of the path given
    // or of the file's content in the answer.
    nix::unistd::mkfifo(
        &links.join("fifo.yaml"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    std::os::unix::fs::symlink("/etc/passwd", links.join("passwd.yaml")).expect("symlink");
    std::os::unix::fs::symlink("/dev/zero", links.join("zero.yaml")).expect("symlink");
    std::os::unix::fs::symlink(&links, dir.path().join("via-link")).expect("symlink");
    let big = std::fs::File::create(links.join("big.yaml")).expect("big");
    big.set_len(100 * 1024 * 1024).expect("100 MB");
    std::fs::write(dir.path().join("outside.yaml"), good).expect("write");
    let secret = "root:$6$s3cr3tsalt$Zm9vYmFyYmF6cXV4:19000:0:99999:7:::\n";
    std::fs::write(links.join("shadow.yaml"), secret).expect("write");
    std::fs::write(
        links.join("key.yaml"),
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----\n",
    )
    .expect("write");
    let cases: Vec<(String, &str)> = [
        ("fifo.yaml".to_owned(), "not a regular file"),
        ("sub".to_owned(), "not a regular file"),
        ("passwd.yaml".to_owned(), "symlink"),
        ("zero.yaml".to_owned(), "symlink"),
        ("/dev/zero".to_owned(), "outside the link directory"),
        ("/etc/shadow".to_owned(), "outside the link directory"),
        (
            dir.path().join("via-link/good.yaml").display().to_string(),
            "outside the link directory",
        ),
        ("big.yaml".to_owned(), "larger than 1048576 bytes"),
        (
            dir.path().join("outside.yaml").display().to_string(),
            "outside the link directory",
        ),
        ("../outside.yaml".to_owned(), "not a file name beneath"),
        (
            "sub/../../outside.yaml".to_owned(),
            "not a file name beneath",
        ),
        ("missing.yaml".to_owned(), "no such file"),
        ("".to_owned(), "not a file name beneath"),
        ("shadow.yaml".to_owned(), "the file is not"),
        ("key.yaml".to_owned(), "the file is not"),
    ]
    .into_iter()
    .collect();
    let before = snapshot(&p.root);
    for (i, (link, why)) in cases.iter().enumerate() {
        let body =
            serde_json::json!({"Name": format!("hostile-{i}"), "Opts": {"link": link}}).to_string();
        let (status, got) = p.call("/VolumeDriver.Create", &body);
        let err = err_of(&got);
        assert_eq!(status, 400, "{link}: {got}");
        assert!(
            err.starts_with("Opts.link: ") && err.contains(why),
            "{link}: {err}"
        );
        let echoed = [
            "s3cr3tsalt",
            "Zm9vYmFy",
            "b3BlbnNzaC1rZXkt",
            "root:",
            "PRIVATE KEY",
        ];
        assert!(!echoed.iter().any(|e| err.contains(e)), "{link}: {err}");
        let file_name = Path::new(link)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        assert!(
            file_name.is_empty() || !err.contains(file_name),
            "{link} quoted: {err}"
        );
        assert_eq!(snapshot(&p.root), before, "{link} changed the tree");
    }
    // The bystander is untouched and the plugin answers as before.
    let (status, got) = p.call("/VolumeDriver.List", "{}");
    assert_eq!(status, 200, "{got}");
    let names: Vec<&str> = got["Volumes"]
        .as_array()
        .expect("Volumes")
        .iter()
        .filter_map(|v| v["Name"].as_str())
        .collect();
    assert_eq!(names, ["by-name", "by-path", "bystander"]);
    assert!(bystander.join("events").exists());
    for name in ["by-name", "by-path"] {
        let body = serde_json::json!({ "Name": name }).to_string();
        assert_eq!(p.call("/VolumeDriver.Remove", &body).0, 200, "{name}");
    }
    let unmount = r#"{"Name":"bystander","ID":"c1"}"#;
    assert_eq!(p.call("/VolumeDriver.Unmount", unmount).0, 200);
    assert_eq!(
        p.call("/VolumeDriver.Remove", r#"{"Name":"bystander"}"#).0,
        200
    );
    drop(p);
}

/// `systemd-socket-activate` (systemd's own tool) listening on `listen` and running the
/// plugin, serving `socket`, at the first connection, as a socket unit would.
fn activated(dir: &Path, listen: &Path, socket: &Path) -> ipclink_testkit::process::Process {
    let mut cmd = Command::new(ipclink_testkit::require_tool("systemd-socket-activate"));
    cmd.arg("-l")
        .arg(listen)
        .arg(BIN)
        .args(["volume-plugin", "--storage", "dir", "--socket"])
        .arg(socket)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--docker-spec")
        .arg(dir.join("docker/plugins/ipclink.spec"));
    let mut p = ipclink_testkit::process::Process::spawn(
        "systemd-socket-activate",
        cmd,
        &dir.join("activate.log"),
    );
    p.wait_until("the socket listens", Duration::from_secs(10), || {
        listen.exists()
    });
    p
}

#[test]
fn under_socket_activation_the_plugin_serves_the_passed_socket_and_leaves_it() {
    let dir = tmp();
    let socket = dir.path().join("plugin.sock");
    let spec = dir.path().join("docker/plugins/ipclink.spec");
    let mut p = activated(dir.path(), &socket, &socket);
    // The first request starts the plugin on the passed socket and is answered.
    let (status, got) = common::plugin::call(&socket, "/Plugin.Activate", "{}");
    assert_eq!(
        (status, got),
        (200, serde_json::json!({"Implements": ["VolumeDriver"]})),
        "{}",
        p.log()
    );
    p.wait_until("the spec file", Duration::from_secs(10), || spec.exists());
    assert_eq!(
        std::fs::read_to_string(&spec).expect("spec"),
        format!("unix://{}\n", socket.display())
    );
    assert!(p.log().contains("activated=true"), "{}", p.log());
    // Stopped, it leaves the socket and the spec to the service manager, which keeps
    // the socket answering and starts the plugin again.
    assert!(p.stop().success(), "{}", p.log());
    assert!(socket.exists() && spec.exists(), "{}", p.log());
}

#[test]
fn a_socket_passed_for_another_path_is_refused_and_nothing_is_made() {
    let dir = tmp();
    let (other, socket) = (
        dir.path().join("other.sock"),
        dir.path().join("plugin.sock"),
    );
    let mut p = activated(dir.path(), &other, &socket);
    // The connection starts the plugin, which refuses the socket and exits.
    let _ = UnixStream::connect(&other);
    let status = p.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{}", p.log());
    assert!(
        p.log().contains(&format!(
            "--socket: the socket passed (socket activation) is bound at {}; give --socket the same path",
            other.display()
        )),
        "{}",
        p.log()
    );
    assert!(!socket.exists(), "no socket of its own");
    assert!(
        !dir.path().join("docker").exists() && !dir.path().join("root").exists(),
        "no spec file and no root"
    );
}

#[test]
fn the_docker_spec_exists_only_while_the_plugin_serves() {
    let dir = tmp();
    let spec = dir.path().join("docker/plugins/ipclink.spec");
    let arg = spec.display().to_string();
    let mut p = Plugin::start_with_args(dir.path(), &["--docker-spec", &arg]);
    assert_eq!(
        std::fs::read_to_string(&spec).expect("written once the socket answers"),
        format!("unix://{}\n", p.socket.display())
    );
    assert!(p.process.stop().success(), "{}", p.log());
    assert!(
        !spec.exists() && !p.socket.exists(),
        "dockerd must not find a plugin that is gone"
    );
}

#[test]
fn the_systemd_units_verify_and_name_one_socket() {
    let units = ipclink_testkit::repo_root().join("packaging/systemd");
    let dir = tmp();
    let mut sockets = Vec::new();
    for unit in [
        "ipclink-volume-plugin.socket",
        "ipclink-volume-plugin.service",
    ] {
        let text = std::fs::read_to_string(units.join(unit)).expect("unit");
        sockets.extend(
            text.split(|c: char| c.is_whitespace() || c == '=' || c == '\'')
                .filter(|w| w.ends_with("plugin.sock"))
                .map(|w| w.trim_start_matches("unix://").to_owned()),
        );
        // The binary the service starts is this build's (verify checks it exists).
        let text = text.replace("/usr/local/bin/ipclink-sidecar", BIN);
        std::fs::write(dir.path().join(unit), text).expect("copy");
    }
    sockets.dedup();
    assert_eq!(
        sockets,
        ["/run/ipclink/plugin.sock"],
        "one socket in both units"
    );
    let out = Command::new(ipclink_testkit::require_tool("systemd-analyze"))
        .args(["verify", "--man=no"])
        .arg(dir.path().join("ipclink-volume-plugin.socket"))
        .arg(dir.path().join("ipclink-volume-plugin.service"))
        .output()
        .expect("systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// `ipclink-sidecar reset --volume-plugin SOCKET NAME`: (exit code, stdout, stderr).
fn reset_cli(p: &Plugin, name: &str) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(["reset", "--volume-plugin"])
        .arg(&p.socket)
        .arg(name)
        .output()
        .expect("run reset");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A region a member grew and wrote.
fn scribble(region: &Path) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(region)
        .expect("open region");
    f.set_len(65536).expect("grow");
    std::os::unix::fs::FileExt::write_all_at(&f, b"MARK", 0).expect("write");
}

fn is_declared(region: &Path) -> bool {
    let bytes = std::fs::read(region).expect("read region");
    bytes.len() == 4096 && bytes.iter().all(|&b| b == 0)
}

#[test]
fn a_volume_no_caller_mounts_starts_as_declared_and_reset_waits_for_its_callers() {
    assert!(nix::unistd::Uid::effective().is_root(), "needs root");
    let dir = tmp();
    let _unmount = Unmounter(dir.path().to_owned());
    let p = Plugin::start(dir.path());
    let (status, got) = p.call(
        "/VolumeDriver.Create",
        r#"{"Name":"v","Opts":{"shm":"frames:4Ki","semaphores":"slots:3"}}"#,
    );
    assert_eq!(status, 200, "{got}");
    let mount = |id: &str| {
        let (status, got) = p.call(
            "/VolumeDriver.Mount",
            &format!(r#"{{"Name":"v","ID":"{id}"}}"#),
        );
        assert_eq!(status, 200, "{got}");
        PathBuf::from(got["Mountpoint"].as_str().expect("Mountpoint"))
    };
    let unmount = |id: &str| {
        let (status, got) = p.call(
            "/VolumeDriver.Unmount",
            &format!(r#"{{"Name":"v","ID":"{id}"}}"#),
        );
        assert_eq!(status, 200, "{got}");
    };
    let region = mount("a").join("frames");
    scribble(&region);

    // Mounted: refused, over the socket and by the command, and nothing changes.
    let before = snapshot(&p.root);
    let (status, got) = p.call("/IpcLink.Reset", r#"{"Name":"v"}"#);
    assert_eq!(status, 409, "{got}");
    assert_eq!(
        err_of(&got),
        "Name: volume \"v\" is mounted by 1 caller(s) (a); stop the containers that use it first"
    );
    let (code, _, stderr) = reset_cli(&p, "v");
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("is mounted by 1 caller(s) (a)"), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(snapshot(&p.root), before);
    // A second caller while one has it: kept as it is.
    mount("b");
    assert!(!is_declared(&region));

    // Unmounted by all: the command resets it.
    unmount("a");
    unmount("b");
    let (code, stdout, stderr) = reset_cli(&p, "v");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "volume v: reset to its declared state\n");
    assert!(is_declared(&region));
    let sem = std::fs::read(region.with_file_name("sem.slots")).expect("semaphore");
    assert_eq!(sem[..4], 3u32.to_ne_bytes());

    // The first caller after none finds the declared state, whatever was left.
    scribble(&region);
    mount("c");
    assert!(is_declared(&region), "{}", p.log());
    assert!(
        p.log()
            .contains("no container used the volume: its link starts as declared"),
        "{}",
        p.log()
    );

    // A volume that does not exist: refused naming it, exit 2.
    let (code, _, stderr) = reset_cli(&p, "nope");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("Name: no ipclink volume \"nope\""),
        "{stderr}"
    );
    unmount("c");
    assert_eq!(p.call("/VolumeDriver.Remove", r#"{"Name":"v"}"#).0, 200);
}
