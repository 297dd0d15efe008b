//! A queue between two Compose services on Docker Engine through the volume plugin:
//! examples/queue/docker-compose.yml as written. Two unchanged programs written against
//! POSIX `mq_*` use "/jobs" with `LD_PRELOAD=libipclink_queue.so`, each in its own IPC
//! namespace and with no network: the receiver creates the queue in the link with its
//! `mq_attr`, the sender finds it, and 100,000 messages in three priorities arrive, each
//! priority in the order sent. The queue is a file of the link, the receiver's uid. And
//! the same pair with the queue declared in the volume's `driver_opts` instead.

mod compose_support;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use compose_support::{Down, one_at_a_time, start_plugin};
use ipclink_testkit::engine::Engine::Docker;
use ipclink_testkit::engine::{Shared, hold};
use ipclink_testkit::{output_text as text, repo_root};

#[test]
fn unchanged_mq_programs_in_two_services_share_a_queue_on_docker() {
    pair(&[], 100_000, "maxmsg 64 msgsize 64\n");
}

/// The queue declared in the volume's `driver_opts` (examples/queue/declared.yml over the
/// example): made by the plugin with the declared capacity and message size, the owner
/// and mode; the receiver's `mq_open(O_CREAT)` with its own `mq_attr` opens it as it is.
#[test]
fn a_queue_declared_in_driver_opts_is_the_one_the_services_use() {
    pair(
        &["-f", "docker-compose.yml", "-f", "declared.yml"],
        2_000,
        "maxmsg 32 msgsize 48\n",
    );
}

/// Runs the example (`files`: Compose's `-f` options, none for the example alone) with
/// `messages`, checks that they arrived and the receiver saw `attr`, and the queue file.
fn pair(files: &[&str], messages: u32, attr: &str) {
    let _one = one_at_a_time();
    let e = Docker;
    let images = e.prepare();
    let host = hold(Shared::Plugin);
    let (work, _plugin) = start_plugin(e, &images, "ipclink-queue-", &host);
    let dir = repo_root().join("examples/queue");
    let project = "ipclink-e2e-queue";
    let down = Down {
        engine: e,
        dir: &dir,
        project,
    };
    down.clean();
    let n = messages.to_string();
    let out = e.compose(
        &dir,
        project,
        &[("MESSAGES", &n)],
        &[files, &["up", "-d"]].concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let c = |service: &str| e.container(project, service);
    e.exited_ok(&c("recv"), Duration::from_secs(120));
    e.exited_ok(&c("send"), Duration::from_secs(30));
    let rlog = e.logs(&c("recv"));
    assert!(rlog.contains(attr), "{rlog}");
    assert!(
        rlog.contains(&format!("received {n}, in order within each priority")),
        "{rlog}"
    );
    assert!(e.logs(&c("send")).contains(&format!("sent {n}")));
    for service in ["recv", "send"] {
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
    let queue = work
        .path()
        .join("volumes/docker")
        .join(format!("{project}-link"))
        .join("mq.jobs");
    let meta = std::fs::metadata(&queue).expect("the queue in the link");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (1000, 0o600));
    let params = ipclink_queue::stats::read(&std::fs::File::open(&queue).expect("open"))
        .expect("a queue")
        .params;
    assert_eq!(
        format!(
            "maxmsg {} msgsize {}\n",
            params.capacity, params.message_size
        ),
        attr
    );
    let out = down.clean();
    assert!(out.status.success(), "{}", text(&out));
}
