//! Protobuf event batches (`proto/mlaudit/v1/events.proto`): the message types and the decoder
//! of the `mlaudit-proto` crate, which the queue consumers share.

pub use mlaudit_proto::decode::{decode_batch, decode_batch_limited, ProtoError, MAX_PROTO_EVENTS};
pub use mlaudit_proto::{
    encode_batch, Actor, ActorType, Event, EventBatch, PredictionAttributes, Subject,
};
