//! Zenoh between Compose services on Docker Engine that have no network (loopback only),
//! through an ipclink link at /dev/shm (examples/zenoh): the subscriber listens on a Unix
//! socket in the link, the publisher connects to it, and 1,000 samples of 64 KiB arrive
//! in order, every one in shared memory the publisher made in the link; while the two
//! hold them, the plugin's metrics show Zenoh's segments and socket in the link as
//! discovered objects, with both containers as their holders. The
//! example's `tcp` profile, the baseline the benchmark measures against, passes the same
//! samples over TCP between two containers, none in shared memory.

mod compose_support;

use std::time::Duration;

use compose_support::{Down, one_at_a_time, start_plugin, wait_until};
use ipclink_testkit::engine::Engine::Docker;
use ipclink_testkit::engine::{Shared, hold};
use ipclink_testkit::http::{get_ok, holders};
use ipclink_testkit::{output_text as text, repo_root, zenoh_objects_held};

#[test]
fn zenoh_over_a_socket_and_shared_memory_in_the_link_on_docker() {
    let _one = one_at_a_time();
    let e = Docker;
    let images = e.prepare();
    let host = hold(Shared::Plugin);
    let (work, _plugin) = start_plugin(e, &images, "ipclink-zenoh-", &host);
    let dir = repo_root().join("examples/zenoh");
    let project = "ipclink-e2e-zenoh";
    let down = Down {
        engine: e,
        dir: &dir,
        project,
    };
    down.clean();
    // Both hold everything until `release` appears in the link.
    let env = [("ZENOH_WAIT_FOR", "/dev/shm/release")];
    let out = e.compose(&dir, project, &env, &["up", "-d", "sub", "pub"]);
    assert!(out.status.success(), "{}", text(&out));
    let c = |service: &str| e.container(project, service);
    for service in ["sub", "pub"] {
        assert_eq!(
            e.ok(&[
                "inspect",
                "--format",
                "{{.HostConfig.NetworkMode}}",
                &c(service)
            ]),
            "none"
        );
    }
    // Zenoh's own objects in the link, as the plugin reports them: its segments and the
    // socket, discovered, with the two containers as holders.
    let (sub, publisher) = (c("sub"), c("pub"));
    let holders = wait_until(
        "Zenoh's objects and their holders in the plugin's metrics",
        Duration::from_secs(120),
        || {
            let m = get_ok(9465, "/metrics").unwrap_or_default();
            zenoh_objects_held(
                &m,
                &format!("{project}-link"),
                "container",
                &sub,
                &publisher,
            )
            .then(|| format!("{:?}", holders(&m, &format!("{project}-link"), "container")))
        },
    );
    eprintln!("holders: {holders}");
    let link = work
        .path()
        .join("volumes/docker")
        .join(format!("{project}-link"));
    std::fs::write(link.join("release"), b"").expect("release");
    e.exited_ok(&c("sub"), Duration::from_secs(180));
    e.exited_ok(&c("pub"), Duration::from_secs(60));
    ipclink_testkit::assert_zenoh_pair_over_the_link(&e.logs(&c("sub")), &e.logs(&c("pub")), 1000);

    // The baseline: the same pair over TCP on a network, shared memory off.
    let out = e.compose(
        &dir,
        project,
        &[],
        &["--profile", "tcp", "up", "-d", "tcp-sub", "tcp-pub"],
    );
    assert!(out.status.success(), "{}", text(&out));
    e.exited_ok(&c("tcp-sub"), Duration::from_secs(180));
    e.exited_ok(&c("tcp-pub"), Duration::from_secs(60));
    let slog = e.logs(&c("tcp-sub"));
    assert!(slog.contains("zenoh sub: listening on tcp/"), "{slog}");
    assert!(
        slog.contains(
            "zenoh sub: 1000 samples of 65536 bytes arrived in order, 0 in shared memory"
        ),
        "{slog}"
    );
    let out = down.clean();
    assert!(out.status.success(), "{}", text(&out));
}
