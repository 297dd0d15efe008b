//! `ipclink-sidecar`: flags and wiring; the work is in the library.

use clap::Parser;
use ipclink_sidecar::cli::{Cli, Command, default_root};
use ipclink_sidecar::{Error, load_files, ready, status, status_table, up, volume_plugin};

fn main() {
    ipclink_runtime::init_logging();
    ipclink_runtime::raise_open_files_limit();
    let cli = Cli::parse();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                what: "start runtime".into(),
                source,
            })
    };
    let result = match cli.command {
        Command::Up(args) => runtime().and_then(|rt| rt.block_on(up(args))),
        Command::VolumePlugin(args) => runtime().and_then(|rt| rt.block_on(volume_plugin(args))),
        Command::Ready { listen } => ready(listen),
        Command::Validate { files } => load_files(&files).map(|plans| {
            for p in &plans {
                println!(
                    "{}/{}: valid ({} objects, sizeLimit {} bytes)",
                    p.namespace,
                    p.name,
                    p.objects.len(),
                    p.size_limit
                );
            }
        }),
        Command::Status {
            root,
            endpoint,
            json,
        } => {
            let samples = match endpoint {
                Some(at) => runtime().and_then(|rt| {
                    rt.block_on(ipclink_runtime::client::links(
                        &at,
                        None,
                        std::time::Duration::from_secs(10),
                    ))
                    .map(|r| r.links)
                    .map_err(|source| Error::Io {
                        what: format!("GET http://{at}/v1/links"),
                        source,
                    })
                }),
                None => status(&root.unwrap_or_else(default_root)),
            };
            samples.map(|samples| {
                if json {
                    let report = ipclink_core::report::LinksReport {
                        links: samples,
                        members: Vec::new(),
                    };
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                } else if samples.is_empty() {
                    println!("no links");
                } else {
                    print!("{}", status_table(&samples));
                }
            })
        }
    };
    if let Err(e) = result {
        match &e {
            Error::Invalid(problems) => {
                for p in &problems.0 {
                    eprintln!("error: {p}");
                }
                eprintln!("{} problem(s); nothing was changed", problems.0.len());
            }
            other => eprintln!("error: {other}"),
        }
        std::process::exit(e.exit_code());
    }
}
