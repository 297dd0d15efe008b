//! Fast-DDS (Debian's libfastrtps 2.9, a publisher and a subscriber we compiled against
//! it, examples/fastdds) between Compose services on Docker Engine that have no network
//! path to each other, through ipclink links at /dev/shm served by the volume plugin,
//! with the shared-memory-only profile (docs/fastdds.md):
//!
//! - services without a network (loopback only) get the same Fast-DDS host id, and
//!   1,000 samples arrive, in order;
//! - services each on a network of their own (an address each; the profile opens no IP
//!   socket, so nothing crosses the networks) get different host ids; with the preload
//!   library (`LD_PRELOAD=/libipclink_samehost.so`) the same, and the samples arrive;
//! - without it both work in the link, with different host ids, and never discover or
//!   match each other: the failure mode the docs describe;
//! - the preload without the shared-memory-only profile is refused by the pair.

mod compose_support;

use std::time::Duration;

use compose_support::{Down, one_at_a_time, start_plugin, wait_until};
use ipclink_testkit::engine::Engine::Docker;
use ipclink_testkit::engine::{Shared, hold};
use ipclink_testkit::http::{get_ok, holders};
use ipclink_testkit::{
    assert_fastdds_pair_matched, fastdds_host_id, fastdds_objects_held,
    fastdds_participant_segment, output_text as text, repo_root,
};

#[test]
fn fastdds_over_a_link_without_a_network_path() {
    let _one = one_at_a_time();
    let e = Docker;
    let images = e.prepare();
    let host = hold(Shared::Plugin);
    let (work, _plugin) = start_plugin(e, &images, "ipclink-fastdds-", &host);
    let dir = repo_root().join("examples/fastdds");
    let project = "ipclink-e2e-fastdds";
    let down = Down {
        engine: e,
        dir: &dir,
        project,
    };
    down.clean();
    // The programs give up after 240 s, before the waits below do: their own message
    // then says how far they got.
    // The pairs that pass samples then hold their participants until `release` appears
    // in their link.
    let env = [
        ("FASTDDS_SAMPLES", "1000"),
        ("FASTDDS_TIMEOUT_S", "240"),
        ("FASTDDS_WAIT_FOR", "/dev/shm/release"),
    ];
    let out = e.compose(&dir, project, &env, &["up", "-d"]);
    assert!(out.status.success(), "{}", text(&out));
    let c = |service: &str| e.container(project, service);

    // The first pair has no network (loopback only). The others each have an address
    // on a network of their own, routed to each other on this machine (dockerd runs
    // without iptables here), but the profile opens no IP socket (below).
    assert_eq!(
        e.ok(&[
            "inspect",
            "--format",
            "{{.HostConfig.NetworkMode}}",
            &c("sub-alone")
        ]),
        "none"
    );
    let address = |service: &str| {
        e.ok(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &c(service),
        ])
    };
    let (pub_ip, sub_ip) = (address("pub-unaware"), address("sub-unaware"));
    assert!(!pub_ip.is_empty() && pub_ip != sub_ip, "{pub_ip} {sub_ip}");
    // Loopback only, and the preload library: the samples arrive through the link, and
    // while the two hold their participants the plugin's /metrics show Fast-DDS's own
    // objects in it (the discovery port's segment, each participant's segment),
    // discovered, mapped by both containers.
    for pair in ["alone", "apart"] {
        let (publisher, subscriber) = (c(&format!("pub-{pair}")), c(&format!("sub-{pair}")));
        let link = format!("{project}-{pair}");
        let held = wait_until(
            "Fast-DDS's objects and their holders in the plugin's metrics",
            Duration::from_secs(300),
            || {
                let m = get_ok(9465, "/metrics").unwrap_or_default();
                fastdds_objects_held(&m, &link, "container", &publisher, &subscriber)
                    .then(|| format!("{:?}", holders(&m, &link, "container")))
            },
        );
        eprintln!("{pair}: {held}");
        std::fs::write(
            work.path()
                .join("volumes/docker")
                .join(&link)
                .join("release"),
            b"",
        )
        .expect("release");
        e.exited_ok(&subscriber, Duration::from_secs(300));
        e.exited_ok(&publisher, Duration::from_secs(60));
        assert_fastdds_pair_matched(&e.logs(&publisher), &e.logs(&subscriber), pair);
    }

    // Without it: both work in the link (each participant's segment is there), with
    // different host ids, and they never match, while the pairs above did.
    let (publisher, subscriber) = (c("pub-unaware"), c("sub-unaware"));
    let (plog, slog) = wait_until("both unaware participants", Duration::from_secs(60), || {
        let (p, s) = (e.logs(&publisher), e.logs(&subscriber));
        (p.contains("host id") && s.contains("host id")).then_some((p, s))
    });
    assert_ne!(
        fastdds_host_id(&plog, "pub"),
        fastdds_host_id(&slog, "sub"),
        "different networks, different host ids"
    );
    let link = work
        .path()
        .join("volumes/docker/ipclink-e2e-fastdds-unaware");
    let segments = || {
        std::fs::read_dir(&link)
            .expect("the link")
            .flatten()
            .filter(|f| fastdds_participant_segment(&f.file_name().to_string_lossy()))
            .count()
    };
    wait_until(
        "both participants' segments in the link",
        Duration::from_secs(60),
        || (segments() == 2).then_some(()),
    );
    // With their participants made, the processes of the profile hold no TCP, UDP or
    // raw socket (the pairs that passed samples ran the same profile, and have exited).
    for service in ["pub-unaware", "sub-unaware"] {
        let pid = e.ok(&["inspect", "--format", "{{.State.Pid}}", &c(service)]);
        let held: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fds")
            .flatten()
            .filter_map(|f| std::fs::read_link(f.path()).ok())
            .filter_map(|t| {
                let t = t.display().to_string();
                Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
            })
            .collect();
        for table in ["tcp", "tcp6", "udp", "udp6", "raw", "raw6"] {
            let t = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
            // sl local remote st queues tr when retrnsmt uid timeout inode ...
            let mine: Vec<&str> = t
                .lines()
                .skip(1)
                .filter(|l| {
                    l.split_whitespace()
                        .nth(9)
                        .is_some_and(|i| held.iter().any(|h| h == i))
                })
                .collect();
            assert!(mine.is_empty(), "{service} holds {table} sockets: {mine:?}");
        }
    }
    assert!(
        link.join("fastrtps_port7400").exists(),
        "{}",
        link.display()
    );
    for (role, container) in [("pub", &publisher), ("sub", &subscriber)] {
        let now = e.logs(container);
        for said in ["matched", "participant discovered"] {
            assert!(
                !now.contains(&format!("fastdds {role}: {said}")),
                "{container}: {now}"
            );
        }
    }
    assert_eq!(
        e.ok(&["inspect", "--format", "{{.State.Running}}", &subscriber]),
        "true"
    );

    let out = down.clean();
    assert!(out.status.success(), "{}", text(&out));

    // The preload without the profile: refused, since every member everywhere would
    // then pass for local over the network transports too.
    let out = e.cli(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-e",
        "LD_PRELOAD=/libipclink_samehost.so",
        "localhost/ipclink/fastdds:0.1.0",
        "pub",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("LD_PRELOAD is set but the network transports are on"),
        "{}",
        text(&out)
    );
}
