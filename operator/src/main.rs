//! `ipclink-operator`: Kubernetes operator reconciling IpcLink resources. Grows in its own issue; for now it reports its version.

fn main() {
    println!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"));
}
