//! Names users see outside the `IpcLink` type itself (DESIGN.md §3), defined once for the
//! CSI driver, the operator and the chart's tests.

/// The CSI driver name: `CSIDriver` object, inline volumes, StorageClass provisioner.
pub const DRIVER_NAME: &str = "csi.ipclink.dev";
/// The node topology key every node plugin reports, with [`topology_value`] of the
/// node's name as its value.
pub const TOPOLOGY_KEY: &str = "topology.ipclink.dev/node";

/// Longest topology value (CSI), which the kubelet also sets as a Node label value.
pub const MAX_TOPOLOGY_VALUE: usize = 63;

/// The value of [`TOPOLOGY_KEY`] for the node `node` (a DNS subdomain of up to 253
/// characters): the name itself when it fits in 63 characters, else its first 46
/// characters, '-' and 16 hex digits of its FNV-1a hash. The node plugin (in its topology)
/// and the operator (in the volumes it provisions) compute the same value, on any version.
pub fn topology_value(node: &str) -> String {
    if node.len() <= MAX_TOPOLOGY_VALUE {
        return node.to_owned();
    }
    let hash = fnv1a64(node.as_bytes());
    let keep = (0..=MAX_TOPOLOGY_VALUE - 17)
        .rev()
        .find(|&i| node.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}-{hash:016x}", &node[..keep])
}

/// FNV-1a, 64 bits: a fixed function, so names made from it never change between
/// releases or machines.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The audience of the bearer tokens the node plugins' and the operator's metrics
/// accept (projected ServiceAccount tokens, TokenRequests): never the API server's own,
/// so no reader hands them a token that could act on the API server.
pub const METRICS_AUDIENCE: &str = "ipclink.dev/metrics";

/// Label on the objects the operator makes for a link (claims, volumes); its value is
/// the link's name.
pub const LINK_LABEL: &str = "ipclink.dev/link";

/// The name of link `link`'s Lease, in the link's namespace, held by the node the
/// link lives on (the node plugin creates it at the first publish; it is owned by the
/// IpcLink and goes with it).
pub fn link_lease_name(link: &str) -> String {
    format!("ipclink-{link}")
}

/// Checks a DNS label (RFC 1123): 1..=63 of `a-z0-9-`, starting and ending alphanumeric.
pub fn check_dns_label(value: &str) -> Result<(), String> {
    let allowed = "a DNS label: 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit";
    if value.is_empty() {
        return Err(format!("must not be empty; must be {allowed}"));
    }
    if value.len() > 63 {
        return Err(format!(
            "{:?} is {} characters long; must be {allowed}",
            value.escape_debug().to_string(),
            value.len()
        ));
    }
    if is_label(value) {
        Ok(())
    } else {
        Err(format!("{:?} is not {allowed}", value))
    }
}

/// Whether `part` is made of `a-z0-9-` and starts and ends alphanumeric (any length).
fn is_label(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !part.starts_with('-')
        && !part.ends_with('-')
}

/// Checks a DNS subdomain (RFC 1123, as Kubernetes checks object names such as a Node's):
/// 1..=253 characters, dot-separated parts of `a-z0-9-` that start and end alphanumeric.
pub fn check_dns_subdomain(value: &str) -> Result<(), String> {
    let allowed = "a DNS subdomain: 1 to 253 characters of a-z, 0-9, '-' and '.', each dot-separated part starting and ending with a letter or digit";
    if value.is_empty() {
        return Err(format!("must not be empty; must be {allowed}"));
    }
    if value.len() > 253 {
        return Err(format!(
            "{:?}... is {} characters long; must be {allowed}",
            value
                .chars()
                .take(32)
                .collect::<String>()
                .escape_debug()
                .to_string(),
            value.len()
        ));
    }
    if value.split('.').all(is_label) {
        Ok(())
    } else {
        Err(format!("{value:?} is not {allowed}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_values_fit_a_label_value_and_tell_long_names_apart() {
        assert_eq!(topology_value("node-1"), "node-1");
        let eks = "ip-10-0-1-23.us-west-2.compute.internal";
        assert_eq!(topology_value(eks), eks);
        let exactly = "a".repeat(63);
        assert_eq!(topology_value(&exactly), exactly);
        let long = format!("{}.example.com", vec!["n".repeat(63); 3].join("."));
        let other = long.replacen('n', "m", 1).chars().rev().collect::<String>();
        for name in [&long, &format!("x{}", &long[1..]), &other] {
            let v = topology_value(name);
            assert_eq!(v.len(), 63, "{v}");
            assert_eq!(v, topology_value(name), "stable");
            // A label value: alphanumeric at both ends, [-._a-zA-Z0-9] between.
            assert!(v.starts_with(|c: char| c.is_ascii_alphanumeric()), "{v}");
            assert!(v.ends_with(|c: char| c.is_ascii_alphanumeric()), "{v}");
            assert!(
                v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
                "{v}"
            );
        }
        // Names that share their first 46 characters still get different values.
        let twin = format!("{}.example.org", vec!["n".repeat(63); 3].join("."));
        assert_eq!(long[..46], twin[..46]);
        assert_ne!(topology_value(&long), topology_value(&twin));
        // The hash is the fixed FNV-1a: this value must never change between releases.
        assert_eq!(
            topology_value(&long),
            format!("{}-{}", &long[..46], "1d2902c762231986")
        );
    }
}

/// One link's identity: its namespace and name. The key of every per-link map (budget
/// reservations, busy guards, status throttles, gathered depths); printed `ns/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkKey {
    /// Namespace (DNS label).
    pub namespace: String,
    /// Link name (DNS label).
    pub name: String,
}

impl LinkKey {
    /// The key of link `name` in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        LinkKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
