//! Kubernetes Events: one way both binaries name themselves as reporters.

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

/// A recorder writing through `client`, reporting as `controller` (the
/// binary's field manager) from replica `instance` (its pod name).
pub fn recorder(client: Client, controller: &str, instance: &str) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: controller.to_owned(),
            instance: Some(instance.to_owned()),
        },
    )
}
