//! What users get without building from source: the `Containerfile` that turns the
//! static binaries into the chart's image (built here by podman, the engine this machine
//! runs; Docker Engine reads the same file), and the release workflow that publishes
//! images and the chart, checked by actionlint since it cannot run here.

use std::path::Path;
use std::process::{Command, Output};

use ipclink_testkit::{
    compose_engine, output_text as text, repo_root as root, script_path, static_binary,
};

const BINARIES: [&str; 3] = ["ipclink-csi", "ipclink-operator", "ipclink-sidecar"];

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("run podman")
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no image architecture for {other}"),
    }
}

#[test]
fn the_containerfile_builds_the_chart_image_from_the_static_binaries() {
    let images = compose_engine();
    let context = tempfile::tempdir().expect("temp dir");
    let dist = context.path().join("dist").join(arch());
    std::fs::create_dir_all(&dist).expect("mkdir");
    for b in BINARIES {
        std::fs::copy(static_binary(&images, b), dist.join(b)).expect("copy");
    }
    let tag = "localhost/ipclink/containerfile-test:latest";
    let out = podman(&[
        "build",
        "--no-cache",
        "-f",
        root().join("Containerfile").to_str().expect("utf-8"),
        "-t",
        tag,
        context.path().to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "podman build: {}", text(&out));

    // The chart runs each binary by its path; the default entrypoint is the operator.
    let version = format!("ipclink-operator {}", env!("CARGO_PKG_VERSION"));
    let out = podman(&["run", "--rm", tag, "--version"]);
    assert!(
        text(&out).contains(&version),
        "the entrypoint: {}",
        text(&out)
    );
    for b in BINARIES {
        let out = podman(&[
            "run",
            "--rm",
            "--entrypoint",
            &format!("/{b}"),
            tag,
            "--help",
        ]);
        assert!(out.status.success(), "/{b} --help: {}", text(&out));
    }
    // Nothing but the three binaries (FROM scratch): the image's files, listed.
    let created = podman(&["create", tag]);
    assert!(created.status.success(), "{}", text(&created));
    let id = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!("podman export {id} | tar -t"))
        .output()
        .expect("export");
    let _ = podman(&["rm", &id]);
    let _ = podman(&["rmi", tag]);
    let mut files: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").to_owned())
        .filter(|l| !l.is_empty() && !l.ends_with('/'))
        .filter(|l| {
            !matches!(
                l.as_str(),
                "etc/hosts" | "etc/resolv.conf" | "etc/hostname" | "run/.containerenv"
            )
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        BINARIES,
        "{}",
        String::from_utf8_lossy(&listing.stdout)
    );
}

#[test]
fn the_release_workflow_passes_actionlint() {
    let actionlint = script_path("install-actionlint");
    let workflows = root().join(".github/workflows");
    let check = |file: &Path| {
        Command::new(&actionlint)
            .arg("-no-color")
            .arg(file)
            .current_dir(root())
            .output()
            .expect("run actionlint")
    };
    let out = check(&workflows.join("release.yml"));
    assert!(out.status.success(), "{}", text(&out));
    let release = std::fs::read_to_string(workflows.join("release.yml")).expect("release.yml");
    for needle in [
        "file: Containerfile",
        "platforms: linux/amd64,linux/arm64",
        "helm push",
        "ghcr.io/",
        "scripts/package-chart",
    ] {
        assert!(
            release.contains(needle),
            "{needle} missing from release.yml"
        );
    }
    // The check can fail: the same workflow with an undefined step output is refused.
    let broken = tempfile::tempdir().expect("temp dir");
    let dir = broken.path().join(".github/workflows");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("release.yml"),
        release.replace("steps.name.outputs.image", "steps.nmae.outputs.image"),
    )
    .expect("write");
    let out = check(&dir.join("release.yml"));
    assert!(
        !out.status.success() && text(&out).contains("nmae"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_published_chart_names_the_image_the_release_pushed() {
    let tools = script_path("install-chart-tools");
    let helm = tools.join("helm");
    let out_dir = tempfile::tempdir().expect("temp dir");
    let package = |version: &str, image: &str| {
        Command::new(root().join("scripts/package-chart"))
            .args([version, image])
            .arg(out_dir.path())
            .env("HELM", &helm)
            .output()
            .expect("run scripts/package-chart")
    };
    let out = package("9.8.7", "ghcr.io/example/ipclink");
    assert!(out.status.success(), "{}", text(&out));
    let chart = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(chart.ends_with("ipclink-9.8.7.tgz"), "{chart}");
    let rendered = Command::new(&helm)
        .args([
            "template",
            "ipclink",
            &chart,
            "--namespace",
            "ipclink-system",
            "--kube-version",
            "1.34.0",
        ])
        .output()
        .expect("helm template");
    assert!(rendered.status.success(), "{}", text(&rendered));
    let yaml = String::from_utf8_lossy(&rendered.stdout);
    let images: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    // The operator, the node plugin and the uninstall hook: all the pushed image.
    assert!(images.len() >= 2, "{yaml}");
    assert!(
        images.iter().all(|i| *i == "ghcr.io/example/ipclink:9.8.7"),
        "{images:?}"
    );
    // The chart in the repository is unchanged: it keeps the local image.
    let values =
        std::fs::read_to_string(root().join("charts/ipclink/values.yaml")).expect("values");
    assert!(values.contains("repository: localhost/ipclink/ipclink"));
    // Bad input is refused by name, and nothing is packaged.
    let before = std::fs::read_dir(out_dir.path()).expect("dir").count();
    for (version, image, field) in [
        ("v1", "ghcr.io/example/ipclink", "VERSION"),
        ("1.0.0", "ghcr.io/Example/ipclink:latest", "IMAGE"),
        ("1.0.0", "x|y", "IMAGE"),
    ] {
        let out = package(version, image);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{version} {image}: {}",
            text(&out)
        );
        assert!(text(&out).contains(field), "{}", text(&out));
    }
    assert_eq!(
        std::fs::read_dir(out_dir.path()).expect("dir").count(),
        before
    );
}
