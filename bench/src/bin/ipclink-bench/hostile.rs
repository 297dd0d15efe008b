//! A hostile link: deep trees of long names and over a million duplicated descriptors,
//! scraped again and again.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use ipclink_core::Store;
use nix::sys::stat::Mode;

use super::*;

/// Members that set out to make scrapes expensive: 1,000 FIFOs eight directories deep
/// with 255-byte names in a link they may write to, and a million duplicates of one
/// FIFO descriptor across five processes (200,000 each; `--quick`: a tenth). The scraper
/// runs in a process of its own, as `up` does (every process, holders by descriptor).
pub(super) fn hostile(store: &Store, cfg: &Config, rows: &mut Vec<String>) {
    let quick = cfg.probe_channels < 10_000;
    link_of(
        store,
        "hostile",
        "  allowCreate: true\n  channels:\n    - { name: declared, kind: fifo }\n".into(),
    );
    let dir = store.link_path("probe", "hostile");
    let link = store.open_link("probe", "hostile").expect("open");
    let long = |c: char| std::iter::repeat_n(c, 255).collect::<String>();
    let mut made = 0;
    for i in 0..1000usize {
        // Eight levels of 255-byte names, then the FIFO's own 255-byte name.
        let mut fd = link.try_clone().expect("dup");
        for level in 0..8 {
            let name =
                format!("{}{}", level, long((b'a' + (i % 26) as u8) as char))[..255].to_owned();
            let _ =
                nix::sys::stat::mkdirat(fd.as_fd(), name.as_str(), Mode::from_bits_truncate(0o755));
            fd = ipclink_core::fs::open_dir_at(fd.as_fd(), name.as_str()).expect("level");
        }
        let name = format!("{i:04}{}", long('f'))[..255].to_owned();
        if nix::sys::stat::mknodat(
            fd.as_fd(),
            name.as_str(),
            nix::sys::stat::SFlag::S_IFIFO,
            Mode::from_bits_truncate(0o644),
            0,
        )
        .is_ok()
        {
            made += 1;
        }
    }
    assert_eq!(made, 1000, "FIFOs made");
    // A million (a tenth with --quick), in as many processes as the limit needs.
    let total: usize = if quick { 100_000 } else { 1_000_000 };
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard as usize)
        .unwrap_or(1024);
    let per = (limit.saturating_sub(64)).clamp(1, 200_000);
    let procs = total.div_ceil(per);
    let fifo = dir.join("declared");
    let dups: Vec<(Child, usize)> = (0..procs)
        .map(|_| {
            let mut c = Command::new(std::env::current_exe().expect("own path"))
                .args(["--child", "dups"])
                .arg(&fifo)
                .arg(per.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn dups");
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(c.stdout.take().expect("stdout")),
                &mut line,
            )
            .expect("ready");
            let held: usize = line
                .strip_prefix("ready ")
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("{line}"));
            (c, held)
        })
        .collect();
    let held: usize = dups.iter().map(|(_, n)| n).sum();
    let scrapes = if quick { 20 } else { 100 };
    let out = Command::new(std::env::current_exe().expect("own path"))
        .args(["--child", "hostile-scrape"])
        .arg(
            dir.parent()
                .and_then(Path::parent)
                .expect("the store's root"),
        )
        .arg(scrapes.to_string())
        .output()
        .expect("scraper");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = said
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let (p99, max, hwm_kib, bytes, p50) = (v[0], v[1], v[2], v[3], v[4]);
    rows.push(format!(
        "| hostile link: 1,000 FIFOs 8 deep with 255-byte names, {held} duplicated descriptors in {procs} processes; {scrapes} scrapes, p50 / p99 / max (ms) | {p50:.2} / {p99:.2} / {max:.2} | — | — | p99 ≤ 100 ms |"
    ));
    rows.push(format!(
        "| hostile link: the scraper's peak RSS (MiB) and /metrics (KiB) | {:.1} / {:.0} | — | — | RSS ≤ 64 MiB |",
        hwm_kib / 1024.0,
        bytes / 1024.0
    ));
    for (mut c, _) in dups {
        drop(c.stdin.take());
        let _ = c.wait();
    }
    drop(link);
    store.teardown("probe", "hostile").expect("teardown");
}
