//! Flags of the protections that close a new pod's first moments: attaching on the
//! kernel's link events, and the program on the node's uplinks.

use globset::{Glob, GlobSet, GlobSetBuilder};

#[derive(clap::Args, Debug, Clone)]
pub struct FirstPacketArgs {
    /// Attach to a new pod interface as soon as the kernel announces it (rtnetlink
    /// RTM_NEWLINK); the interface scan every --poll-ms stays as a fallback. `false`:
    /// the scan only.
    #[arg(
        long,
        env = "ZONEWALL_LINK_EVENTS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "true|false"
    )]
    pub link_events: bool,
    /// Comma-separated globs of the node's uplinks (e.g. `eth*,ens*,bond*`): traffic
    /// leaving through them that a local pod sent but no zonewall program judged (an
    /// interface not attached yet) is dropped, counted and logged as `unjudged-egress`.
    /// Empty: no uplink program.
    #[arg(
        long,
        env = "ZONEWALL_UPLINKS",
        value_delimiter = ',',
        value_name = "GLOB"
    )]
    pub uplinks: Vec<String>,
}

impl FirstPacketArgs {
    /// The uplink globs, or an error naming the one that does not parse.
    pub fn uplink_globs(&self) -> Result<GlobSet, String> {
        let mut builder = GlobSetBuilder::new();
        for glob in self.uplinks.iter().map(|glob| glob.trim()) {
            if glob.is_empty() {
                continue;
            }
            builder.add(
                Glob::new(glob)
                    .map_err(|error| format!("--uplinks: bad glob {glob:?}: {error}"))?,
            );
        }
        builder
            .build()
            .map_err(|error| format!("--uplinks: {error}"))
    }

    /// Whether any uplink glob is given.
    pub fn has_uplinks(&self) -> bool {
        self.uplinks.iter().any(|glob| !glob.trim().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    fn parse(arguments: &[&str]) -> Result<super::FirstPacketArgs, clap::Error> {
        crate::config::Cli::try_parse_from(
            ["firewall-agent", "--config", "p.yaml"]
                .into_iter()
                .chain(arguments.iter().copied()),
        )
        .map(|cli| cli.run.first_packet)
    }

    #[test]
    fn link_events_are_on_by_default_and_uplinks_off() {
        let defaults = parse(&[]).unwrap();
        assert!(defaults.link_events);
        assert!(!defaults.has_uplinks());
        assert!(defaults.uplink_globs().unwrap().is_empty());
        let off = parse(&["--link-events", "false", "--uplinks", "eth*,bond*"]).unwrap();
        assert!(!off.link_events);
        assert!(off.has_uplinks());
        let globs = off.uplink_globs().unwrap();
        assert!(globs.is_match("eth0") && globs.is_match("bond1") && !globs.is_match("veth1"));
        assert!(parse(&["--link-events", "maybe"]).is_err());
        let error = parse(&["--uplinks", "eth[0"])
            .unwrap()
            .uplink_globs()
            .unwrap_err();
        assert!(error.contains("--uplinks"), "{error}");
    }
}
