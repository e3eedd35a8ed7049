use clap::Parser;

/// Syncs objects between kcp workspaces and this service cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    Cli::parse();
    anyhow::bail!("the sync agent's controllers are not part of this build yet")
}
