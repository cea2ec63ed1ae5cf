//! Refusal reasons on the wire: a gRPC error of the peering service carries its stable reason
//! in the `meshfed-reason` metadata entry, beside a message for people. Callers read the entry,
//! never the message text.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// The metadata key of a refusal's reason.
pub const REASON_KEY: &str = "meshfed-reason";

/// A refusal with `code`, its stable `reason` in metadata, and `detail` for people (the
/// message says `reason: detail`).
pub fn refusal(code: Code, reason: &'static str, detail: impl std::fmt::Display) -> Status {
    let mut s = Status::new(code, format!("{reason}: {detail}"));
    s.metadata_mut()
        .insert(REASON_KEY, MetadataValue::from_static(reason));
    s
}

/// The stable reason a refusal carries, if it carries one (a meshfed peer's always does).
pub fn reason_of(s: &Status) -> Option<&str> {
    s.metadata().get(REASON_KEY)?.to_str().ok()
}

/// The detail of a refusal made by [`refusal`] (its message without the reason).
pub fn detail_of(s: &Status) -> &str {
    match reason_of(s) {
        Some(r) => s
            .message()
            .strip_prefix(r)
            .and_then(|m| m.strip_prefix(": "))
            .unwrap_or(s.message()),
        None => s.message(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_travels_in_metadata_not_in_the_message() {
        let s = refusal(
            Code::PermissionDenied,
            "ClientIDRejected",
            "x is not a peer",
        );
        assert_eq!(reason_of(&s), Some("ClientIDRejected"));
        assert_eq!(detail_of(&s), "x is not a peer");
        // A message that merely looks like a reason is not one.
        let forged = Status::permission_denied("ClientIDRejected: from the message");
        assert_eq!(reason_of(&forged), None);
        assert_eq!(detail_of(&forged), "ClientIDRejected: from the message");
    }
}
