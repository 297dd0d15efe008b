//! A queue between two Compose services on Docker Engine through the volume plugin:
//! examples/queue/docker-compose.yml as written. Two unchanged programs written against
//! POSIX `mq_*` use "/jobs" with `LD_PRELOAD=libipclink_queue.so`, each in its own IPC
//! namespace and with no network: the receiver creates the queue in the link with its
//! `mq_attr`, the sender finds it, and 100,000 messages in three priorities arrive, each
//! priority in the order sent. The queue is a file of the link, the receiver's uid.

mod compose_support;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use compose_support::{Down, one_at_a_time, start_plugin};
use ipclink_testkit::engine::Engine::Docker;
use ipclink_testkit::engine::{Shared, hold};
use ipclink_testkit::{output_text as text, repo_root};

#[test]
fn unchanged_mq_programs_in_two_services_share_a_queue_on_docker() {
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
    let out = e.compose(&dir, project, &[], &["up", "-d"]);
    assert!(out.status.success(), "{}", text(&out));
    let c = |service: &str| e.container(project, service);
    e.exited_ok(&c("recv"), Duration::from_secs(120));
    e.exited_ok(&c("send"), Duration::from_secs(30));
    let rlog = e.logs(&c("recv"));
    assert!(rlog.contains("maxmsg 64 msgsize 64\n"), "{rlog}");
    assert!(
        rlog.contains("received 100000, in order within each priority"),
        "{rlog}"
    );
    assert!(e.logs(&c("send")).contains("sent 100000"));
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
    let out = down.clean();
    assert!(out.status.success(), "{}", text(&out));
}
