"""Query an `mlaudit export` with DuckDB, after proving that its rows are the log's.

    pip install duckdb ./clients/python[verify]
    mlaudit export --out ./export                 # NDJSON (or --format parquet), one directory per day
    python examples/export-duckdb/query.py ./export --key mlaudit-data/key/verifier.key

For every partition the manifest beside it is checked with only the log's verifier key:
the signed checkpoint; the file's SHA-256; each row's entry header (its seq, and that the
row's columns say what the entry says); the Merkle root of the partition's leaves; the root of
the tree up to the partition's end, from the `prefix` hashes and those leaves; and the
consistency proof from that tree to the signed one. Then DuckDB reads every partition directly
(hive partitioning gives the `dt` column) and answers a question an auditor asks.
Exit status 0: verified and queried; 1: a check failed; 2: usage or environment error.
"""

import argparse
import base64
import datetime
import glob
import hashlib
import json
import os
import sys

from mlaudit.verify import (VerificationError, leaf_hash, node_hash, parse_checkpoint_body,
                            parse_entry, parse_verifier_key, verify_consistency, verify_note)


def mth(leaves):
    """RFC 9162 §2.1.1 Merkle tree hash of a list of leaf hashes."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def read_rows(duckdb, path, data):
    """The rows of an NDJSON or Parquet export file, as dicts, in file order."""
    if not path.endswith(".parquet"):
        return [json.loads(line) for line in data.splitlines()]
    rel = duckdb.sql(f"SELECT * FROM read_parquet({sql_text(path)}) ORDER BY seq")
    rows = [dict(zip(rel.columns, r)) for r in rel.fetchall()]
    for r in rows:  # Parquet keeps attributes as JSON text
        if r["attributes"] is not None:
            r["attributes"] = json.loads(r["attributes"])
    return rows


def sql_text(s):
    return "'" + s.replace("'", "''") + "'"


def verify_partition(duckdb, manifest_path, key):
    with open(manifest_path) as f:
        m = json.load(f)
    if m.get("format") != "mlaudit-export-manifest/v1":
        raise VerificationError(f"{manifest_path}: not an mlaudit export manifest")
    body = verify_note(m["checkpoint"], key)
    origin, size, root = parse_checkpoint_body(body)
    if origin != key.name:
        raise VerificationError(f"{manifest_path}: checkpoint of {origin!r}, not {key.name!r}")
    data_path = os.path.join(os.path.dirname(manifest_path), os.path.basename(m["file"]))
    with open(data_path, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != m["file_sha256"]:
        raise VerificationError(f"{data_path}: its SHA-256 is not the manifest's")
    first, end = m["first"], m["end"]
    day = os.path.basename(os.path.dirname(manifest_path)).removeprefix("dt=")
    leaves = []
    for n, row in enumerate(read_rows(duckdb, data_path, data)):
        entry_bytes = base64.b64decode(row["entry"])
        entry = parse_entry(entry_bytes)
        if entry.seq != first + n or row["seq"] != entry.seq:
            raise VerificationError(f"{data_path}: row {n} holds seq {row['seq']}, "
                                    f"expected {first + n}")
        check_row(row, entry, day, f"{data_path}: row {n}")
        leaves.append(leaf_hash(entry_bytes))
    if len(leaves) != end - first or len(leaves) != m["rows"]:
        raise VerificationError(f"{data_path}: {len(leaves)} rows for seqs {first}..{end}")
    if mth(leaves) != base64.b64decode(m["range_root"]):
        raise VerificationError(f"{data_path}: the rows do not hash to the manifest's range root")
    prefix = [base64.b64decode(h) for h in m["prefix"]]
    root_at_end = compact_root(first, prefix, leaves)
    if root_at_end != base64.b64decode(m["root_at_end"]):
        raise VerificationError(f"{manifest_path}: the tree up to seq {end} is not the manifest's")
    proof = [base64.b64decode(h) for h in m["consistency_proof"]]
    verify_consistency(end, size, root_at_end, root, proof)
    return first, end, data_path


SUBJECTS = ("model", "version", "dataset", "dataset_version", "run", "pipeline_run",
            "deployment", "request")


def rfc3339_ns(text):
    """Unix nanoseconds of an RFC 3339 UTC time with up to nine fractional digits."""
    base, _, frac = text.removesuffix("Z").partition(".")
    t = datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.timezone.utc)
    return int(t.timestamp()) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def check_row(row, entry, day, where):
    """Every column must say what the entry header (or the payload it commits to) says."""
    stage = "custom" if entry.kind.startswith("x.") else entry.kind.split(".")[0]
    said = [row["id"], row["kind"], row["stage"], row["actor_type"], row["actor_id"],
            row["principal"], rfc3339_ns(row["event_time"]), rfc3339_ns(row["receipt_time"]),
            row["payload_sha256"]] + [row[f] for f in SUBJECTS]
    meant = [entry.event_id, entry.kind, stage, entry.actor_type, entry.actor_id,
             entry.principal, entry.event_time_ns, entry.receipt_time_ns,
             entry.payload_sha256.hex()] + [entry.subject.get(f) for f in SUBJECTS]
    if said != meant:
        raise VerificationError(f"{where} does not say what its entry says")
    received = datetime.datetime.fromtimestamp(entry.receipt_time_ns // 1_000_000_000,
                                               datetime.timezone.utc).date().isoformat()
    if received != day:
        raise VerificationError(f"{where} was received on {received}, not in dt={day}")
    if row["payload"] is not None:
        data = row["payload"].encode()
        if hashlib.sha256(data).digest() != entry.payload_sha256:
            raise VerificationError(f"{where}: its payload is not the one its entry commits to")
        if json.loads(data).get("attributes") != row["attributes"]:
            raise VerificationError(f"{where}: its attributes are not its payload's")
    elif row["attributes"] is not None or row["payload_present"]:
        raise VerificationError(f"{where}: attributes without the payload they come from")


def compact_root(first, prefix, leaves):
    """The root of the tree of `first + len(leaves)` leaves, from the perfect subtrees
    covering 0..first (largest first, one per set bit of `first`) and the leaves after."""
    stack = []  # (size, hash), largest first
    sizes = [1 << lvl for lvl in range(63, -1, -1) if first & (1 << lvl)]
    if len(sizes) != len(prefix):
        raise VerificationError(f"prefix holds {len(prefix)} hashes, {len(sizes)} expected")
    stack = list(zip(sizes, prefix))
    for leaf in leaves:
        cur = (1, leaf)
        while stack and stack[-1][0] == cur[0]:
            left = stack.pop()
            cur = (left[0] * 2, node_hash(left[1], cur[1]))
        stack.append(cur)
    if not stack:
        return hashlib.sha256(b"").digest()
    acc = stack[-1][1]
    for _, h in reversed(stack[:-1]):
        acc = node_hash(h, acc)
    return acc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", help="the directory `mlaudit export --out` wrote")
    ap.add_argument("--key", required=True, help="the log's verifier key (text or file)")
    args = ap.parse_args(argv)
    try:
        import duckdb
    except ImportError:
        print("query.py: pip install duckdb", file=sys.stderr)
        return 2
    text = open(args.key).read() if os.path.isfile(args.key) else args.key
    key = parse_verifier_key(text.strip())
    manifests = sorted(glob.glob(os.path.join(args.export, "dt=*", "*.manifest.json")))
    if not manifests:
        print(f"query.py: no manifests under {args.export}", file=sys.stderr)
        return 2
    ranges = []
    try:
        for path in manifests:
            ranges.append(verify_partition(duckdb, path, key))
        ranges.sort()
        for (a_first, a_end, a), (b_first, _, b) in zip(ranges, ranges[1:]):
            if b_first < a_end:
                raise VerificationError(f"{a} and {b} overlap (seqs {b_first}..{a_end}): "
                                        "export each range once, or into a fresh directory")
    except VerificationError as e:
        print(f"NOT VERIFIED: {e}")
        return 1
    rows = sum(end - first for first, end, _ in ranges)
    print(f"verified {rows} rows in {len(ranges)} partitions against the signed checkpoint")
    # Only the files the manifests vouch for: anything else in the directory is not read.
    paths = [path for _, _, path in ranges]
    sources = []
    ndjson = [p for p in paths if not p.endswith(".parquet")]
    parquet = [p for p in paths if p.endswith(".parquet")]
    columns = "dt, kind, model, version"
    if ndjson:
        sources.append(f"SELECT {columns} FROM read_json_auto([{', '.join(map(sql_text, ndjson))}], "
                       "hive_partitioning = true, format = 'newline_delimited')")
    if parquet:
        sources.append(f"SELECT {columns} FROM read_parquet([{', '.join(map(sql_text, parquet))}], "
                       "hive_partitioning = true)")
    result = duckdb.sql(
        f"""SELECT dt, model, version, count(*) AS predictions
            FROM ({' UNION ALL '.join(sources)})
            WHERE kind = 'prediction.served'
            GROUP BY ALL ORDER BY ALL"""
    ).fetchall()
    print("dt          model       version  predictions")
    for dt, model, version, n in result:
        print(f"{dt!s:<11} {model!s:<11} {version!s:<8} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
