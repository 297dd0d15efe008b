//! The headline benchmark: between two containers on podman, throughput and round trip
//! through an ipclink volume (`driver: ipclink`) — a polled shm ring, the same ring
//! handed over with semaphores, a FIFO pair and a path socket — against TCP between the
//! same two containers over their network, which is what users do today. One run, one
//! table; ratios are measured side by side in that run.
//!
//! Needs root, podman (scripts/install-compose) and our images; it builds and loads the
//! `xbench` peer (testkit/peers/xbench.c) itself and serves the volume plugin on the socket
//! containers.conf names unless one already answers there.
//!   ipclink-compose-bench [--quick]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ipclink_testkit::{compose_engine, output_text, repo_root, static_binary};

const PLUGIN_SOCKET: &str = "/run/ipclink/plugin.sock";
const NETWORK: &str = "ipclink-bench";
const VOLUME: &str = "ipclink-bench";
const SERVER: &str = "ipclink-bench-server";
const IMAGE: &str = "localhost/ipclink/xbench:dev";

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        output_text(&out)
    );
    out
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(args).output().expect("podman")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct Cleanup {
    plugin: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        podman(&["rm", "-f", "-t", "0", SERVER]);
        podman(&["volume", "rm", "-f", VOLUME]);
        podman(&["network", "rm", "-f", NETWORK]);
        if let Some(mut p) = self.plugin.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// Builds the xbench peer (static musl) into a scratch image and loads it.
fn load_peer(images: &Path) {
    let work = tempfile::tempdir().expect("temp dir");
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).expect("mkdir");
    run(Command::new("musl-gcc")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(rootfs.join("xbench"))
        .arg(repo_root().join("testkit/peers/xbench.c")));
    let archive = images.join("xbench.tar");
    run(Command::new(repo_root().join("scripts/oci-image"))
        .arg(IMAGE)
        .arg(&archive)
        .arg(&rootfs)
        .arg("/xbench"));
    run(Command::new("podman").arg("load").arg("-i").arg(&archive));
}

fn plugin_answers() -> bool {
    std::os::unix::net::UnixStream::connect(PLUGIN_SOCKET).is_ok()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root (podman, the plugin's tmpfs)"
    );
    let images = compose_engine();
    load_peer(&images);
    let mut cleanup = Cleanup { plugin: None };
    podman(&["rm", "-f", "-t", "0", SERVER]);
    podman(&["volume", "rm", "-f", VOLUME]);
    let root = tempfile::tempdir().expect("temp dir");
    if !plugin_answers() {
        let bin = static_binary(&images, "ipclink-sidecar");
        cleanup.plugin = Some(
            Command::new(bin)
                .args(["volume-plugin", "--socket", PLUGIN_SOCKET, "--root"])
                .arg(root.path())
                .stdout(Stdio::null())
                .spawn()
                .expect("start the plugin"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !plugin_answers() {
            assert!(Instant::now() < deadline, "the plugin did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if podman(&["network", "exists", NETWORK]).status.code() != Some(0) {
        run(Command::new("podman").args(["network", "create", NETWORK]));
    }
    run(Command::new("podman").args([
        "volume",
        "create",
        "--driver",
        "ipclink",
        "-o",
        "shm=ring:16Mi",
        "-o",
        "fifo=up,down",
        "-o",
        "socket=control:0777",
        "-o",
        "semaphores=ping:0,pong:0,slots:16,filled:0",
        "-o",
        "abi=musl",
        "-o",
        "mode=0666",
        "-o",
        "size=32Mi",
        VOLUME,
    ]));
    let (bytes, trips) = if quick {
        ("67108864", "2000")
    } else {
        ("2147483648", "20000")
    };
    let env = [
        format!("XBENCH_BYTES={bytes}"),
        format!("XBENCH_TRIPS={trips}"),
    ];
    let mount = format!("{VOLUME}:/dev/shm");
    let common = |args: &mut Vec<String>| {
        args.extend([
            "--network".into(),
            NETWORK.into(),
            "-v".into(),
            mount.clone(),
        ]);
        for e in &env {
            args.extend(["-e".into(), e.clone()]);
        }
    };
    let mut server = vec![
        "run".to_owned(),
        "-d".into(),
        "--name".into(),
        SERVER.into(),
    ];
    common(&mut server);
    server.extend([IMAGE.to_owned(), "server".into()]);
    run(Command::new("podman").args(&server));
    let ip = stdout(&run(Command::new("podman").args([
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}"),
        SERVER,
    ])));
    let mut client = vec!["run".to_owned(), "--rm".into()];
    common(&mut client);
    client.extend([IMAGE.to_owned(), "client".into(), ip.clone()]);
    let out = run(Command::new("podman").args(&client));
    let text = stdout(&out);
    let results: Vec<(String, f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("RESULT ")?.split(' ');
            Some((
                f.next()?.to_owned(),
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
            ))
        })
        .collect();
    assert_eq!(results.len(), 5, "client output:\n{text}");
    let tcp = results
        .iter()
        .find(|r| r.0 == "tcp")
        .cloned()
        .expect("tcp result");
    println!(
        "between two containers on podman ({} MiB streamed in 64 KiB chunks, {trips} round trips of 8 bytes; server {ip})",
        bytes.parse::<u64>().unwrap_or(0) >> 20
    );
    println!("| transport | throughput | vs TCP | round trip | vs TCP | target |");
    println!("|---|---|---|---|---|---|");
    for (name, bps, rtt) in &results {
        let target = match name.as_str() {
            "tcp" => "baseline".to_owned(),
            "shm-ring" => verdict(
                bps / tcp.1 >= 5.0 && rtt / tcp.2 <= 0.01,
                "≥5× throughput, ≤0.01× round trip",
            ),
            "shm-sem" => verdict(rtt / tcp.2 <= 0.7, "≤0.7× round trip"),
            _ => verdict(bps / tcp.1 >= 1.0, "≥1× throughput"),
        };
        println!(
            "| {name} | {:.2} GB/s | {:.2}× | {} | {:.3}× | {target} |",
            bps / 1e9,
            bps / tcp.1,
            if *rtt < 1000.0 {
                format!("{rtt:.0} ns")
            } else {
                format!("{:.1} µs", rtt / 1000.0)
            },
            rtt / tcp.2
        );
    }
    drop(cleanup);
}

fn verdict(met: bool, target: &str) -> String {
    format!("{target}: {}", if met { "met" } else { "NOT met" })
}
