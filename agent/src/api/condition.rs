//! Status conditions as every object of this project writes them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Sets `condition` in `conditions`, keeping the transition time when the
/// status did not change. Returns whether anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut condition: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            let same_status = existing.status == condition.status;
            if same_status
                && existing.reason == condition.reason
                && existing.message == condition.message
                && existing.observed_generation == condition.observed_generation
            {
                return false;
            }
            if same_status {
                condition.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = condition;
            true
        }
        None => {
            conditions.push(condition);
            true
        }
    }
}

/// A condition stamped now.
pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_keep_their_transition_time_while_the_status_holds() {
        let mut conditions = Vec::new();
        let first = condition(
            "SchemaPublished",
            false,
            "SourceNotFound",
            "a".into(),
            Some(1),
        );
        let first_time = first.last_transition_time.clone();
        assert!(set_condition(&mut conditions, first.clone()));
        assert!(!set_condition(&mut conditions, first));
        assert!(set_condition(
            &mut conditions,
            condition(
                "SchemaPublished",
                false,
                "InvalidProjection",
                "b".into(),
                Some(2)
            )
        ));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].reason, "InvalidProjection");
        assert_eq!(conditions[0].last_transition_time, first_time);
    }
}
