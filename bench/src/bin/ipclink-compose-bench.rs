//! The headline benchmark: between two containers, on podman and on Docker Engine in one
//! run, throughput and round trip through an ipclink volume (`driver: ipclink`) — a
//! polled shm ring, the same ring handed over with semaphores, a FIFO pair and a path
//! socket — against TCP between the same two containers over their network, which is
//! what users do today, and against the built-in way to share /dev/shm: the same polled
//! ring in an IPC namespace the two share (`--ipc container:`, Compose's `ipc:
//! service:`). The two rings run in turns in one pair of containers that has both (the
//! volume at /ipclink): one ring alone lasts a tenth of a second, and two such runs a
//! minute apart differ by more than the 5% the target allows, so the figures are medians
//! of the turns and the ratio the median of the ratios of turns taken one after the
//! other. One table; ratios are measured side by side in that run.
//!
//! Needs root, both engines (scripts/install-compose, scripts/install-docker) and our
//! images; it builds and loads the `xbench` peer (testkit/peers/xbench.c) itself and
//! serves the volume plugin on the socket each engine looks at unless one already
//! answers there.
//!   ipclink-compose-bench [--quick]
//!
//! With `--zenoh` it measures Zenoh between two containers on Docker Engine
//! (examples/zenoh): the pair over a Unix socket and shared memory in a link against the
//! same pair over TCP between the two containers, in turns.
//!
//! With `--idle-plugin` it measures only what Docker costs with ipclink installed and no
//! plugin running: `docker volume ls` with no spec file (what install-docker leaves) and
//! with a spec naming a socket nobody serves (what it wrote before), side by side, each
//! on a freshly restarted dockerd.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ipclink_testkit::engine::Engine::{self, Docker, Podman};
use ipclink_testkit::{output_text, repo_root, static_binary};

const NETWORK: &str = "ipclink-bench";
const VOLUME: &str = "ipclink-bench";
const SERVER: &str = "ipclink-bench-server";
const IPC_SERVER: &str = "ipclink-bench-ipc-server";
const IMAGE: &str = "localhost/ipclink/xbench:dev";

fn run(e: Engine, args: &[&str]) -> String {
    let out = e.cli(args);
    assert!(
        out.status.success(),
        "{e:?} {args:?} failed:\n{}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn checked(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        output_text(&out)
    );
    out
}

struct Cleanup {
    engine: Engine,
    plugin: Option<Child>,
}

impl Cleanup {
    fn clean(&self) {
        let e = self.engine;
        for c in [SERVER, IPC_SERVER] {
            e.cli(&["rm", "-f", c]);
        }
        e.cli(&["volume", "rm", "-f", VOLUME]);
        e.cli(&["network", "rm", NETWORK]);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.clean();
        if let Some(mut p) = self.plugin.take() {
            let _ = p.kill();
            let _ = p.wait();
            let _ = std::fs::remove_file(self.engine.plugin_socket());
            let _ = std::fs::remove_file(ipclink_testkit::engine::DOCKER_SPEC);
            if self.engine == Docker {
                // dockerd keeps a driver it has used until it restarts (docs/compose.md).
                self.engine.restart(false);
            }
        }
    }
}

/// Builds the xbench peer (static musl) into a scratch image and loads it.
fn load_peer(e: Engine, images: &Path) {
    let work = tempfile::tempdir().expect("temp dir");
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).expect("mkdir");
    checked(
        Command::new("musl-gcc")
            .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
            .arg(rootfs.join("xbench"))
            .arg(repo_root().join("testkit/peers/xbench.c")),
    );
    let archive = images.join("xbench.tar");
    let docker_archive = images.join("xbench-docker.tar");
    checked(
        Command::new(repo_root().join("scripts/oci-image"))
            .env("OCI_IMAGE_DOCKER", &docker_archive)
            .arg(IMAGE)
            .arg(&archive)
            .arg(&rootfs)
            .arg("/xbench"),
    );
    let load = match e {
        Podman => archive,
        Docker => docker_archive,
    };
    run(e, &["load", "-i", load.to_str().expect("utf-8")]);
}

fn answers(socket: &str) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// Serves the volume plugin for `e` on the socket the engine looks at, with volumes
/// under `root`, unless something answers there already; the process it started.
fn serve_plugin(e: Engine, images: &Path, root: &Path) -> Option<Child> {
    let socket = e.plugin_socket();
    if answers(socket) {
        return None;
    }
    let bin = static_binary(images, "ipclink-sidecar");
    let _ = std::fs::remove_file(socket);
    let child = Command::new(bin)
        .args(["volume-plugin", "--socket", socket])
        .args([
            "--docker-spec",
            ipclink_testkit::engine::DOCKER_SPEC,
            "--root",
        ])
        .arg(root)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the plugin");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answers(socket) {
        assert!(Instant::now() < deadline, "the plugin did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(child)
}

/// One RESULT line: transport, bytes per second, round trip in ns.
type Row = (String, f64, f64);

/// An engine's rows and its rings' turn-by-turn ratio (throughput, round trip).
type Run = (Vec<Row>, (f64, f64));

fn results(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("RESULT ")?.split(' ');
            Some((
                f.next()?.to_owned(),
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// The ring pair's RATIO line: ipclink's ring over the `ipc: service:` one, throughput
/// and round trip, as the median of the turns' ratios.
fn ratio(text: &str) -> Option<(f64, f64)> {
    let mut f = text
        .lines()
        .find_map(|l| l.strip_prefix("RATIO "))?
        .split(' ');
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// Every transport between two containers on `e`, then the two rings in turns; the
/// rows and the rings' ratio.
fn bench(e: Engine, bytes: &str, trips: &str, reps: &str) -> Run {
    let images = e.prepare();
    load_peer(e, &images);
    let mut cleanup = Cleanup {
        engine: e,
        plugin: None,
    };
    cleanup.clean();
    let root = tempfile::tempdir().expect("temp dir");
    cleanup.plugin = serve_plugin(e, &images, root.path());
    run(e, &["network", "create", NETWORK]);
    run(
        e,
        &[
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
        ],
    );
    let env = [
        format!("XBENCH_BYTES={bytes}"),
        format!("XBENCH_TRIPS={trips}"),
        format!("XBENCH_REPS={reps}"),
    ];
    let mount = format!("{VOLUME}:/dev/shm");
    let with = |head: &[&str], tail: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = head.iter().map(|s| s.to_string()).collect();
        for e in &env {
            args.extend(["-e".into(), e.clone()]);
        }
        args.extend(tail.iter().map(|s| s.to_string()));
        args
    };
    let server = with(
        &[
            "run",
            "-d",
            "--name",
            SERVER,
            "--network",
            NETWORK,
            "-v",
            mount.as_str(),
        ],
        &[IMAGE, "server"],
    );
    run(e, &refs(&server));
    let ip = run(
        e,
        &[
            "inspect",
            "--format",
            &format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}"),
            SERVER,
        ],
    );
    let client = with(
        &["run", "--rm", "--network", NETWORK, "-v", mount.as_str()],
        &[IMAGE, "client", ip.as_str()],
    );
    let text = run(e, &refs(&client));
    let mut rows = results(&text);
    assert_eq!(rows.len(), 4, "{e:?} client output:\n{text}");

    // The rings: the server makes the built-in baseline's in its own /dev/shm, the client
    // joins its IPC namespace; both have the link at /ipclink.
    let join = format!("container:{IPC_SERVER}");
    let at = format!("{VOLUME}:/ipclink");
    let server = with(
        &[
            "run",
            "-d",
            "--name",
            IPC_SERVER,
            "--ipc",
            "shareable",
            "-v",
            at.as_str(),
        ],
        &[IMAGE, "ring-server"],
    );
    run(e, &refs(&server));
    let client = with(
        &["run", "--rm", "--ipc", join.as_str(), "-v", at.as_str()],
        &[IMAGE, "ring-client"],
    );
    let text = run(e, &refs(&client));
    let rings = results(&text);
    assert_eq!(rings.len(), 2, "{e:?} ring client output:\n{text}");
    let paired = ratio(&text).unwrap_or_else(|| panic!("{e:?} no RATIO line:\n{text}"));
    rows.extend(rings);
    let order = [
        "tcp",
        "socket",
        "fifo",
        "shm-ring",
        "shm-sem",
        "shm-ring-ipc",
    ];
    rows.sort_by_key(|r| order.iter().position(|o| *o == r.0));
    drop(cleanup);
    (rows, paired)
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root (the engines, the plugin's tmpfs)"
    );
    if std::env::args().any(|a| a == "--idle-plugin") {
        idle_plugin();
        return;
    }
    if std::env::args().any(|a| a == "--zenoh") {
        zenoh(quick);
        return;
    }
    let (bytes, trips, reps) = if quick {
        ("67108864", "2000", "3")
    } else {
        ("2147483648", "20000", "21")
    };
    let runs: Vec<(Engine, Run)> = [Podman, Docker]
        .into_iter()
        .map(|e| (e, bench(e, bytes, trips, reps)))
        .collect();
    println!(
        "between two containers ({} MiB streamed in 64 KiB chunks, {trips} round trips of 8 bytes, the polled rings 10× as many; the two rings: medians of {reps} turns each, taken in turns); podman 4.3 + docker-compose 1.29 and Docker Engine 20.10 + Compose v2, same run",
        bytes.parse::<u64>().unwrap_or(0) >> 20
    );
    println!("| engine | transport | throughput | vs TCP | round trip | vs TCP | target |");
    println!("|---|---|---|---|---|---|---|");
    for (e, (rows, paired)) in &runs {
        let find = |name: &str| rows.iter().find(|r| r.0 == name).cloned();
        let tcp = find("tcp").expect("tcp result");
        for (name, bps, rtt) in rows {
            let target = match name.as_str() {
                "tcp" => "baseline".to_owned(),
                "shm-ring" => verdict(
                    bps / tcp.1 >= 5.0 && (0.95..=1.05).contains(&paired.0),
                    &format!(
                        "≥5× TCP, 0.95–1.05× ipc: service ({:.3}× throughput, {:.3}× round trip, turn by turn)",
                        paired.0, paired.1
                    ),
                ),
                "shm-ring-ipc" => "built-in baseline (ipc: service:)".to_owned(),
                "shm-sem" => verdict(rtt / tcp.2 <= 0.7, "≤0.7× round trip"),
                _ => verdict(bps / tcp.1 >= 1.0, "≥1× throughput"),
            };
            println!(
                "| {} | {name} | {:.2} GB/s | {:.2}× | {} | {:.3}× | {target} |",
                match e {
                    Podman => "podman",
                    Docker => "docker",
                },
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
    }
}

fn verdict(met: bool, target: &str) -> String {
    format!("{target}: {}", if met { "met" } else { "NOT met" })
}

/// Seconds `docker volume ls` takes, the median of `n` runs.
fn volume_ls(n: usize) -> f64 {
    let mut took: Vec<f64> = (0..n)
        .map(|_| {
            let start = Instant::now();
            run(Docker, &["volume", "ls", "-q"]);
            start.elapsed().as_secs_f64()
        })
        .collect();
    took.sort_by(f64::total_cmp);
    took[n / 2]
}

/// `docker volume ls` with no plugin running: no spec file, then a spec naming a dead
/// socket, each on a dockerd restarted just before (it keeps a plugin it has found).
fn idle_plugin() {
    Docker.prepare();
    let spec = ipclink_testkit::engine::DOCKER_SPEC;
    let _ = std::fs::remove_file(Docker.plugin_socket());
    Docker.restart(false); // install-docker: removes a spec nobody serves
    assert!(!Path::new(spec).exists(), "no spec after install-docker");
    let none = volume_ls(5);
    std::fs::write(spec, format!("unix://{}\n", Docker.plugin_socket())).expect("spec");
    Docker.restart(false);
    std::fs::write(spec, format!("unix://{}\n", Docker.plugin_socket())).expect("spec");
    let stale = volume_ls(1);
    let _ = std::fs::remove_file(spec);
    Docker.restart(false);
    println!("Docker Engine 20.10 with no ipclink plugin running, same run");
    println!("| /etc/docker/plugins/ipclink.spec | `docker volume ls` | vs none |");
    println!("|---|---|---|");
    println!("| none (install-docker now; as without ipclink) | {none:.2} s | 1.00× |");
    println!(
        "| names a socket nobody serves (install-docker before) | {stale:.2} s | {:.1}× |",
        stale / none
    );
}

/// One turn of a Zenoh pair of examples/zenoh sending `samples` samples: `up` its two
/// services (fresh containers), the TCP pair without a `pool`, the link's pair with the
/// publisher's pool of `pool` bytes; wait for the subscriber and read its line. Bytes per
/// second, after checking that every sample came through shared memory, or none (TCP).
fn zenoh_turn(e: Engine, dir: &Path, project: &str, samples: &str, pool: Option<&str>) -> f64 {
    let mut env = vec![("ZENOH_SAMPLES", samples)];
    let mut args = vec!["up", "-d", "--force-recreate"];
    let (sub, publisher) = match pool {
        Some(pool) => {
            env.push(("ZENOH_POOL", pool));
            ("sub", "pub")
        }
        None => {
            args.splice(..0, ["--profile", "tcp"]);
            ("tcp-sub", "tcp-pub")
        }
    };
    args.extend([sub, publisher]);
    let out = e.compose(dir, project, &env, &args);
    assert!(
        out.status.success(),
        "compose {args:?}: {}",
        output_text(&out)
    );
    let container = e.container(project, sub);
    let code = run(e, &["wait", &container]);
    let log = run(e, &["logs", &container]);
    assert_eq!(code, "0", "{container}: {log}");
    let want = format!(
        "{samples} samples of 65536 bytes arrived in order, {} in shared memory, in ",
        if pool.is_some() { samples } else { "0" }
    );
    let secs: f64 = log
        .lines()
        .find_map(|l| l.split(&want).nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{container}: no line with {want:?}:\n{log}"));
    samples.parse::<f64>().unwrap_or(0.0) * 65536.0 / secs
}

/// Zenoh between two containers on Docker Engine (examples/zenoh): a Unix socket and
/// shared memory in a link, with publisher pools of 1 to 6 MiB, against TCP between the
/// two containers (the example's `tcp` profile, shared memory off), taken in turns;
/// medians of the turns, and the medians of the turn-by-turn ratios.
fn zenoh(quick: bool) {
    let e = Docker;
    let images = e.prepare();
    let root = tempfile::tempdir().expect("temp dir");
    // Stops a plugin it started (and restarts dockerd) even if a turn panics.
    let cleanup = Cleanup {
        engine: e,
        plugin: serve_plugin(e, &images, root.path()),
    };
    let dir = repo_root().join("examples/zenoh");
    let project = "ipclink-bench-zenoh";
    let (samples, turns) = if quick { ("1000", 1) } else { ("20000", 7) };
    let pools = ["1048576", "2097152", "4194304", "6291456"];
    let down = || {
        let args = ["--profile", "tcp", "down", "-v", "--timeout", "2"];
        let out = e.compose(&dir, project, &[("ZENOH_SAMPLES", samples)], &args);
        assert!(out.status.success(), "compose down: {}", output_text(&out));
    };
    down();
    // Per turn: TCP first, then each pool.
    let mut turns_taken: Vec<Vec<f64>> = Vec::new();
    for _ in 0..turns {
        let mut turn = vec![zenoh_turn(e, &dir, project, samples, None)];
        for pool in pools {
            turn.push(zenoh_turn(e, &dir, project, samples, Some(pool)));
        }
        turns_taken.push(turn);
    }
    down();
    drop(cleanup);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let column = |i: usize| median(turns_taken.iter().map(|t| t[i]).collect());
    let ratio = |i: usize| median(turns_taken.iter().map(|t| t[i] / t[0]).collect());
    println!(
        "Zenoh 1.10.2 between two containers on Docker Engine 20.10 ({samples} samples of 64 KiB, reliable, blocking; medians of {turns} turns, the pairs taken in turns), same run"
    );
    println!("| pair | publisher's pool | throughput | vs TCP |");
    println!("|---|---|---|---|");
    println!(
        "| TCP between the containers, shared memory off | none | {:.2} GB/s | 1.00× |",
        column(0) / 1e9
    );
    for (i, pool) in pools.iter().enumerate() {
        let mib = pool.parse::<f64>().unwrap_or(0.0) / f64::from(1 << 20);
        println!(
            "| a Unix socket and shared memory in an ipclink link, no network | {mib:.0} MiB | {:.2} GB/s | {:.2}× |",
            column(i + 1) / 1e9,
            ratio(i + 1)
        );
    }
}
