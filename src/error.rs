//! The command line's failures: typed, with their sources, each with a
//! stable code (the API's codes where the failure is the same), printed as
//! text or, under `--json`, as the API's error object.

use std::io;

/// A failure to report on standard error.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Input on the command line that cannot be used, or a refusal worded here.
    #[error("{0}")]
    Invalid(String),
    /// A runtime call failed (on a data directory).
    #[error(transparent)]
    Runtime(#[from] keyledger_runtime::Error),
    /// The log could not be opened or read.
    #[error(transparent)]
    Store(#[from] keyledger_store::StoreError),
    /// A file or standard output.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// JSON that could not be written or read.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// CSV that could not be written.
    #[error(transparent)]
    Csv(#[from] csv::Error),
    /// A tenant, user or key id that is not one.
    #[error(transparent)]
    Id(#[from] keyledger_core::IdError),
    /// A time or day that is not one.
    #[error(transparent)]
    Time(#[from] keyledger_core::time::TimeError),
    /// The server refused the request (`--url`): its status and its
    /// `{"error": {"code", "message"}}`.
    #[error("{message} (HTTP {status}, {code})")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The API's error code.
        code: String,
        /// The API's message.
        message: String,
    },
    /// The data directory's log could not be opened; `hint` says what to
    /// check (empty when the message says it already).
    #[error("cannot open {}: {source}{hint}", data.display())]
    Open {
        /// The data directory.
        data: std::path::PathBuf,
        /// Why.
        #[source]
        source: keyledger_store::StoreError,
        /// What to check.
        hint: &'static str,
    },
    /// The server could not be reached, or its answer could not be read.
    #[error("{url}: {source}")]
    Http {
        /// The URL asked.
        url: String,
        /// Why.
        #[source]
        source: Box<ureq::Error>,
    },
}

/// The command line's results.
pub type Result<T> = std::result::Result<T, Failure>;

impl Failure {
    /// A failure worded here.
    pub fn msg(text: impl Into<String>) -> Self {
        Failure::Invalid(text.into())
    }

    /// A stable snake_case code: the API's code for the same failure.
    pub fn code(&self) -> String {
        match self {
            Failure::Invalid(_) | Failure::Id(_) | Failure::Time(_) => "invalid_argument".into(),
            Failure::Runtime(e) => keyledger_server::ApiError::from(e.clone())
                .code()
                .to_owned(),
            Failure::Store(_) | Failure::Open { .. } => "store_error".into(),
            Failure::Io(_) => "io_error".into(),
            Failure::Json(_) | Failure::Csv(_) => "output_error".into(),
            Failure::Server { code, .. } => code.clone(),
            Failure::Http { .. } => "unreachable".into(),
        }
    }

    /// Whether this is standard output closed by its reader (`| head`):
    /// not worth a word.
    pub fn is_broken_pipe(&self) -> bool {
        let kind = match self {
            Failure::Io(e) => Some(e.kind()),
            Failure::Json(e) => e.io_error_kind(),
            Failure::Csv(e) => match e.kind() {
                csv::ErrorKind::Io(e) => Some(e.kind()),
                _ => None,
            },
            Failure::Invalid(_)
            | Failure::Runtime(_)
            | Failure::Store(_)
            | Failure::Open { .. }
            | Failure::Id(_)
            | Failure::Time(_)
            | Failure::Server { .. }
            | Failure::Http { .. } => None,
        };
        kind == Some(io::ErrorKind::BrokenPipe)
    }

    /// The text, with every source that adds to it.
    pub fn text(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        // `transparent` variants show their source's text already.
        if matches!(
            self,
            Failure::Runtime(_)
                | Failure::Store(_)
                | Failure::Io(_)
                | Failure::Json(_)
                | Failure::Csv(_)
                | Failure::Id(_)
                | Failure::Time(_)
        ) {
            source = source.and_then(std::error::Error::source);
        }
        while let Some(s) = source {
            let more = s.to_string();
            if !text.contains(&more) {
                text.push_str(&format!(": {more}"));
            }
            source = s.source();
        }
        text
    }

    /// The API's error object: `{"error": {"code", "message"}}`.
    pub fn json(&self) -> serde_json::Value {
        let message = match self {
            // The server's own words; its status and code are beside them.
            Failure::Server {
                status, message, ..
            } => {
                return serde_json::json!({
                    "error": { "code": self.code(), "message": message, "status": status }
                });
            }
            other => other.text(),
        };
        serde_json::json!({ "error": { "code": self.code(), "message": message } })
    }
}
