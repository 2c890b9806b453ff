//! Flags of the protections that close a new pod's first moments: attaching on the
//! kernel's link events.

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
    fn link_events_are_on_by_default() {
        assert!(parse(&[]).unwrap().link_events);
        assert!(!parse(&["--link-events", "false"]).unwrap().link_events);
        assert!(parse(&["--link-events", "maybe"]).is_err());
    }
}
