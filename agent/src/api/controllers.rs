//! The agent's controllers by the names `--disabled-controllers` takes, so
//! an offering can name them too.

use clap::ValueEnum;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A controller of the agent that can be switched off.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ControllerName {
    /// Publishes APIResourceSchemas from PublishedResources and CRDs.
    #[value(name = "apiresourceschema")]
    ApiResourceSchema,
    /// Merges schemas and permission claims into the APIExport.
    #[value(name = "apiexport")]
    ApiExport,
    /// Syncs objects between kcp and the service cluster.
    #[value(name = "sync")]
    Sync,
}

impl ControllerName {
    /// The name as the flag and the offering spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiResourceSchema => "apiresourceschema",
            Self::ApiExport => "apiexport",
            Self::Sync => "sync",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_and_the_spec_spell_every_name_alike() {
        for name in ControllerName::value_variants() {
            let flag = name.to_possible_value().unwrap();
            assert_eq!(flag.get_name(), name.as_str());
            assert_eq!(serde_json::to_value(name).unwrap(), name.as_str());
        }
    }
}
