//! Parquet encoding of export rows (cargo feature `parquet`): the same columns as the NDJSON
//! rows, `seq` as an unsigned 64-bit integer, `payload_present` as a boolean, every other
//! column as UTF-8 (times in RFC 3339, `attributes` as JSON text), zstd-compressed.

use anyhow::Result;
use arrow_array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::Value;
use std::sync::Arc;

/// The text columns, in file order after `seq`.
const TEXT: [&str; 20] = [
    "id",
    "kind",
    "stage",
    "event_time",
    "receipt_time",
    "actor_type",
    "actor_id",
    "principal",
    "model",
    "version",
    "dataset",
    "dataset_version",
    "run",
    "pipeline_run",
    "deployment",
    "request",
    "attributes",
    "payload",
    "payload_sha256",
    "entry",
];

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// One Parquet file holding `rows` (as `super::row` builds them).
pub fn encode(rows: &[Value]) -> Result<Vec<u8>> {
    let mut fields = vec![Field::new("seq", DataType::UInt64, false)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from(
        rows.iter()
            .map(|r| r["seq"].as_u64().unwrap_or_default())
            .collect::<Vec<_>>(),
    ))];
    for name in TEXT {
        fields.push(Field::new(name, DataType::Utf8, true));
        let values: Vec<Option<String>> = rows.iter().map(|r| text(&r[name])).collect();
        columns.push(Arc::new(StringArray::from(values)));
    }
    fields.push(Field::new("payload_present", DataType::Boolean, false));
    columns.push(Arc::new(BooleanArray::from(
        rows.iter()
            .map(|r| r["payload_present"].as_bool().unwrap_or_default())
            .collect::<Vec<_>>(),
    )));
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(out)
}
