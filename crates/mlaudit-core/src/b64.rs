//! Standard base64 (RFC 4648 §4, with padding), the only encoding used in our formats.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Encodes bytes as padded standard base64.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    STANDARD.encode(bytes)
}

/// Decodes padded standard base64; rejects anything else.
pub fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD.decode(text)
}
