//! The API error model: a stable [`ErrorCode`] plus a message, carried inside every gRPC status
//! (as the encoded [`ApiError`] in the status details) so clients never parse messages.

use prost::Message;

pub use crate::pb::api::ApiError;
pub use crate::pb::api::ErrorCode;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code: code as i32,
            message: message.into(),
            ..Default::default()
        }
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn invalid(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        let field = field.into();
        let mut e = Self::new(ErrorCode::InvalidArgument, format!("{field}: {message}"));
        e.field = field;
        e
    }

    pub fn not_leader(leader_id: Option<u64>, leader_address: Option<String>) -> Self {
        let addr = leader_address.clone().unwrap_or_default();
        let msg = match (&leader_id, &leader_address) {
            (Some(id), Some(a)) => format!("not the leader; the leader is server {id} at {a}"),
            _ => "not the leader, and no leader is known yet".to_string(),
        };
        let mut e = Self::new(ErrorCode::NotLeader, msg);
        e.leader_address = addr;
        e.leader_id = leader_id.unwrap_or(0);
        e
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::Internal, message.to_string())
    }

    pub fn unavailable(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::Unavailable, message.to_string())
    }

    /// The stable name of the code, e.g. `NOT_FOUND`.
    pub fn code_name(&self) -> &'static str {
        self.code().as_str_name()
    }

    fn grpc_code(&self) -> tonic::Code {
        match self.code() {
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::Conflict => tonic::Code::Aborted,
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::TooLarge => tonic::Code::ResourceExhausted,
            ErrorCode::NotLeader => tonic::Code::FailedPrecondition,
            ErrorCode::Compacted => tonic::Code::OutOfRange,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Timeout => tonic::Code::DeadlineExceeded,
            ErrorCode::Forbidden => tonic::Code::PermissionDenied,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::Fenced => tonic::Code::FailedPrecondition,
            ErrorCode::Internal | ErrorCode::Unspecified => tonic::Code::Internal,
        }
    }

    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::with_details(
            self.grpc_code(),
            self.message.clone(),
            self.encode_to_vec().into(),
        )
    }

    /// Recover the API error from a status; statuses from the transport itself (connection
    /// refused, deadline) map to UNAVAILABLE/TIMEOUT with tonic's message.
    pub fn from_status(status: &tonic::Status) -> Self {
        if let Ok(e) = ApiError::decode(status.details()) {
            if e.code != 0 {
                return e;
            }
        }
        let code = match status.code() {
            tonic::Code::NotFound => ErrorCode::NotFound,
            tonic::Code::AlreadyExists => ErrorCode::AlreadyExists,
            tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
            tonic::Code::ResourceExhausted => ErrorCode::TooLarge,
            tonic::Code::DeadlineExceeded => ErrorCode::Timeout,
            tonic::Code::PermissionDenied => ErrorCode::Forbidden,
            tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
                ErrorCode::Unavailable
            }
            _ => ErrorCode::Internal,
        };
        ApiError::new(code, status.message().to_string())
    }
}

/// True when a call failed because no connection could be made: the request was never sent, so
/// retrying it elsewhere cannot apply it twice.
pub fn is_connect_error(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && (status.message().contains("connect error")
            || status.message().contains("Connection refused")
            || status.message().contains("error trying to connect"))
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code_name())
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip_keeps_code_and_leader() {
        let e = ApiError::not_leader(Some(2), Some("127.0.0.1:7102".into()));
        let back = ApiError::from_status(&e.to_status());
        assert_eq!(back.code(), ErrorCode::NotLeader);
        assert_eq!(back.leader_address, "127.0.0.1:7102");
        assert_eq!(back.leader_id, 2);
        assert_eq!(back.code_name(), "NOT_LEADER");
    }

    #[test]
    fn transport_status_maps_to_unavailable() {
        let s = tonic::Status::unavailable("connection refused");
        assert_eq!(ApiError::from_status(&s).code(), ErrorCode::Unavailable);
    }
}
