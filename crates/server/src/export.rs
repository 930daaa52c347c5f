//! Exports: the audit trail streamed from the log in chunks (any size, in
//! bounded memory), usage rows in one body (they are few: one per day).

use std::io::Write;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use keyledger_core::{AuditFilter, TenantId};
use keyledger_runtime::Keyledger;
use keyledger_runtime::views::{AuditEntry, DailyView};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::limits::{EXPORT_CHUNK_BYTES, EXPORT_CHUNKS_BUFFERED};
use crate::wire::ExportFormat;

fn content_type(format: ExportFormat) -> &'static str {
    match format {
        ExportFormat::Jsonl => "application/x-ndjson",
        ExportFormat::Csv => "text/csv; charset=utf-8",
    }
}

fn attachment(name: &str, format: ExportFormat) -> String {
    let ext = match format {
        ExportFormat::Jsonl => "jsonl",
        ExportFormat::Csv => "csv",
    };
    format!("attachment; filename=\"{name}.{ext}\"")
}

/// Why a streamed export stopped early.
enum Stop {
    /// The client went away: stop reading the log.
    Gone,
    /// Reading the log failed.
    Ledger(keyledger_runtime::Error),
    /// Encoding failed (a bug).
    Encode(String),
}

impl From<keyledger_runtime::Error> for Stop {
    fn from(e: keyledger_runtime::Error) -> Self {
        Stop::Ledger(e)
    }
}

/// Gathers encoded rows and sends a chunk whenever it is full. The
/// channel is bounded, so a slow client slows the log walk down instead
/// of filling memory.
struct Chunker {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl Chunker {
    fn send(&mut self) -> Result<(), Stop> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(EXPORT_CHUNK_BYTES + 4096),
        ));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| Stop::Gone)
    }

    /// Why a write failed: the client left, or encoding failed.
    fn stop(&self, e: impl std::fmt::Display) -> Stop {
        if self.tx.is_closed() {
            Stop::Gone
        } else {
            Stop::Encode(e.to_string())
        }
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) {
        tracing::error!(error = %e, "{what}; the response is cut short");
        let _ = self
            .tx
            .blocking_send(Err(std::io::Error::other("the export failed")));
    }
}

impl Write for Chunker {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= EXPORT_CHUNK_BYTES {
            self.send().map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
            })?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Streams a tenant's filtered trail.
pub(crate) fn trail(
    ledger: Keyledger,
    tenant: TenantId,
    filter: AuditFilter,
    format: ExportFormat,
) -> Response {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(EXPORT_CHUNKS_BUFFERED);
    let name = format!("audit-{tenant}");
    tokio::task::spawn_blocking(move || {
        let mut out = Chunker {
            tx,
            buf: Vec::with_capacity(EXPORT_CHUNK_BYTES + 4096),
        };
        let walked = match format {
            ExportFormat::Jsonl => {
                ledger.for_each_audit(&tenant, &filter, |r| -> Result<(), Stop> {
                    // Rendered straight into the chunk (the bytes of
                    // `AuditEntry`, without building one).
                    keyledger_runtime::export::json_line(r, &mut out.buf);
                    if out.buf.len() >= EXPORT_CHUNK_BYTES {
                        out.send()?;
                    }
                    Ok(())
                })
            }
            ExportFormat::Csv => {
                let mut w = csv::Writer::from_writer(&mut out);
                let mut fields = keyledger_runtime::export::CsvFields::new();
                let walked = w
                    .write_record(AuditEntry::CSV_HEADER)
                    .map_err(|e| Stop::Encode(e.to_string()))
                    .and_then(|()| {
                        ledger.for_each_audit(&tenant, &filter, |r| -> Result<(), Stop> {
                            w.write_record(fields.fill(r))
                                .map_err(|e| Stop::Encode(e.to_string()))
                        })
                    });
                let flushed = w.flush().map_err(|e| Stop::Encode(e.to_string()));
                drop(w);
                walked
                    .and_then(|n| flushed.map(|()| n))
                    .map_err(|e| match e {
                        Stop::Encode(m) => out.stop(m),
                        other @ (Stop::Gone | Stop::Ledger(_)) => other,
                    })
            }
        };
        match walked.and_then(|_| out.send()) {
            Ok(()) | Err(Stop::Gone) => {}
            Err(Stop::Ledger(e)) => out.fail("an audit export failed part way", e),
            Err(Stop::Encode(e)) => out.fail("encoding an audit export failed", e),
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (
        [
            (header::CONTENT_TYPE, content_type(format).to_owned()),
            (header::CONTENT_DISPOSITION, attachment(&name, format)),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Streams an evidence bundle: `header` (built before the answer starts,
/// so its errors are answered as such), then the range's events, read
/// from the log a page at a time (any range in bounded memory).
pub(crate) fn bundle(
    ledger: Keyledger,
    tenant: TenantId,
    header: keyledger_runtime::BundleHeader,
) -> Response {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(EXPORT_CHUNKS_BUFFERED);
    tokio::task::spawn_blocking(move || {
        let mut out = Chunker {
            tx,
            buf: Vec::with_capacity(EXPORT_CHUNK_BYTES + 4096),
        };
        let walked = serde_json::to_writer(&mut out, &header)
            .map_err(|e| out.stop(e))
            .and_then(|()| out.write_all(b"\n").map_err(|e| out.stop(e)))
            .and_then(|()| {
                ledger.for_each_bundle_event(
                    &tenant,
                    header.from_seq,
                    header.to_seq,
                    |e| -> Result<(), Stop> {
                        serde_json::to_writer(&mut out, &e).map_err(|e| out.stop(e))?;
                        out.write_all(b"\n").map_err(|e| out.stop(e))
                    },
                )
            });
        match walked.and_then(|()| out.send()) {
            Ok(()) | Err(Stop::Gone) => {}
            Err(Stop::Ledger(e)) => out.fail("a bundle failed part way", e),
            Err(Stop::Encode(e)) => out.fail("encoding a bundle failed", e),
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Usage rows as one body.
pub(crate) fn rows(
    rows: &[DailyView],
    per_key: bool,
    format: ExportFormat,
) -> Result<Response, ApiError> {
    let mut buf = Vec::new();
    match format {
        ExportFormat::Jsonl => {
            for r in rows {
                serde_json::to_writer(&mut buf, r)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                buf.push(b'\n');
            }
        }
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(&mut buf);
            w.write_record(DailyView::csv_header(per_key))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            for r in rows {
                w.write_record(r.csv_row())
                    .map_err(|e| ApiError::internal(e.to_string()))?;
            }
            w.flush().map_err(|e| ApiError::internal(e.to_string()))?;
        }
    }
    Ok((
        [
            (header::CONTENT_TYPE, content_type(format).to_owned()),
            (header::CONTENT_DISPOSITION, attachment("usage", format)),
        ],
        buf,
    )
        .into_response())
}
