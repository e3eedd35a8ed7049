use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use offering_operator::crdgen;

/// Provisions kcp APIExports, sync agents and consumer bindings from
/// PublishedOffering objects.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the project's CRDs as a YAML stream, or write one file per CRD.
    Crds {
        /// Write `<plural>.<group>.yaml` files into this directory instead of
        /// printing to standard output.
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds { output_dir } => write_crds(output_dir),
    }
}

fn write_crds(output_dir: Option<PathBuf>) -> anyhow::Result<()> {
    for file in crdgen::crds() {
        let yaml = file.render().context("rendering CRD")?;
        match &output_dir {
            Some(dir) => {
                let path = dir.join(&file.file_name);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}
