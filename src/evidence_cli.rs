//! `keyledger audit checkpoint | bundle | verify-bundle | public-key`:
//! signed checkpoints, evidence bundles and their offline verification.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use keyledger_audit::checkpoint;
use keyledger_audit::{Cosigner, Policy};
use keyledger_core::{Principal, TenantId};
use keyledger_runtime::audit::{self, ProblemKind};
use keyledger_runtime::{Keyledger, UsageWindow};

use crate::cli::{self, ActingArg, Failure, TenantArg};
use crate::output::Out;

/// Evidence subcommands of `keyledger audit`.
#[derive(Subcommand, Debug)]
pub enum EvidenceCmd {
    /// Sign and print a checkpoint (C2SP signed note) of the tenant's Merkle tree.
    Checkpoint {
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Export an evidence bundle: one JSON Lines file, a header line (signed
    /// checkpoint and proofs) then one event per line. The export is recorded.
    Bundle {
        #[command(flatten)]
        tenant: TenantArg,
        #[command(flatten)]
        acting: ActingArg,
        /// First tenant sequence number (default 1).
        #[arg(long)]
        from: Option<u64>,
        /// Last tenant sequence number (default: the last event).
        #[arg(long)]
        to: Option<u64>,
        /// The bundle file to write.
        #[arg(long)]
        output: PathBuf,
    },
    /// Check a bundle offline (no data directory, no server); exit 0 only if everything holds.
    VerifyBundle {
        /// The bundle file.
        file: PathBuf,
        /// The signing public key: base64 or hex of 32 bytes, a note verifier
        /// key, or a file holding one of them.
        #[arg(long)]
        public_key: String,
        /// A checkpoint kept from earlier (a file holding the signed note, or
        /// the JSON of `GET /v1/audit/checkpoint` / `audit checkpoint --json`);
        /// the bundle's tree must extend it. Repeatable.
        #[arg(long = "checkpoint", value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
        #[command(flatten)]
        witnesses: WitnessPolicyArgs,
    },
    /// Check a receipt (C2SP tlog-proof, from `GET /v1/audit/receipt`)
    /// offline: the log's signature, the witnesses' cosignatures against
    /// the policy, and the event's inclusion proof; exit 0 only if it holds.
    VerifyReceipt {
        /// The receipt file.
        file: PathBuf,
        /// The log's key: a note verifier key (`keyledger/<tenant>+<id>+<key>`),
        /// base64 or hex of 32 bytes, or a file holding one of them.
        #[arg(long)]
        key: String,
        /// The event's chain hash (hex, its `hash` in the trail): the receipt
        /// must be for that event.
        #[arg(long, value_name = "HEX")]
        hash: Option<String>,
        #[command(flatten)]
        witnesses: WitnessPolicyArgs,
    },
    /// Print the public key checkpoints are signed with.
    PublicKey {
        /// Also print the note verifier key of this tenant's checkpoints.
        #[arg(long, env = "KEYLEDGER_TENANT")]
        tenant: Option<String>,
    },
}

/// A witness policy: trusted witnesses and how many must have cosigned.
#[derive(clap::Args, Debug)]
pub struct WitnessPolicyArgs {
    /// A trusted witness's verifier key (C2SP cosignature/v1,
    /// `<name>+<hex key ID>+<base64(0x04 || key)>`), or a file holding one. Repeatable.
    #[arg(long = "witness", value_name = "VKEY")]
    pub witnesses: Vec<String>,
    /// How many of the --witness keys must have cosigned (default: all of them).
    #[arg(long, value_name = "K", requires = "witnesses")]
    pub policy: Option<usize>,
}

impl WitnessPolicyArgs {
    /// The policy, if any witness is given.
    fn policy(&self) -> cli::Result<Option<Policy>> {
        if self.witnesses.is_empty() {
            return Ok(None);
        }
        let mut list = Vec::new();
        for w in &self.witnesses {
            let text = std::fs::read_to_string(w).unwrap_or_else(|_| w.clone());
            list.push(
                Cosigner::parse(&text).map_err(|e| Failure::msg(format!("--witness {w}: {e}")))?,
            );
        }
        let k = self.policy.unwrap_or(list.len());
        Policy::new(list, k)
            .map(Some)
            .map_err(|e| Failure::msg(format!("--policy: {e}")))
    }
}

/// Runs an evidence subcommand.
pub async fn run(data: &Path, prefix: &str, out: &Out, cmd: &EvidenceCmd) -> cli::Result<ExitCode> {
    if let EvidenceCmd::VerifyBundle {
        file,
        public_key,
        checkpoints,
        witnesses,
    } = cmd
    {
        return verify_bundle(out, file, public_key, checkpoints, witnesses);
    }
    if let EvidenceCmd::VerifyReceipt {
        file,
        key,
        hash,
        witnesses,
    } = cmd
    {
        return verify_receipt(out, file, key, hash.as_deref(), witnesses);
    }
    let ledger = cli::open(data, prefix, UsageWindow::Manual)?;
    let result = with_ledger(&ledger, out, cmd).await;
    let closed = ledger.shutdown().await;
    let code = result?;
    closed?;
    Ok(code)
}

async fn with_ledger(ledger: &Keyledger, out: &Out, cmd: &EvidenceCmd) -> cli::Result<ExitCode> {
    match cmd {
        EvidenceCmd::Checkpoint { tenant } => {
            // The same body as `GET /v1/audit/checkpoint`.
            let t = cli::tenant(tenant)?;
            let signed = ledger.checkpoint(&t)?;
            out.value(
                &serde_json::json!({
                    "origin": signed.checkpoint.origin,
                    "size": signed.checkpoint.size,
                    "root": crate::output::hex_hash(&signed.checkpoint.root),
                    "note": signed.note,
                }),
                || signed.note.trim_end().to_owned(),
            )?;
        }
        EvidenceCmd::Bundle {
            tenant,
            acting,
            from,
            to,
            output,
        } => {
            let t = cli::tenant(tenant)?;
            let principal = match &acting.acting_user {
                Some(u) => Principal::user(t.clone(), u.parse()?),
                None => Principal::operator(t.clone()),
            };
            let size = ledger.tree_size(&t);
            let file = std::fs::File::create(output)?;
            // Written event by event: any range in bounded memory.
            let (header, events) = ledger
                .export_bundle_to(
                    principal,
                    from.unwrap_or(1),
                    to.unwrap_or(size),
                    std::io::BufWriter::new(file),
                )
                .await?;
            crate::output::bundle_written(
                out,
                output,
                usize::try_from(events).unwrap_or(usize::MAX),
                header.from_seq,
                header.to_seq,
            )?;
        }
        EvidenceCmd::PublicKey { tenant } => {
            let key = ledger
                .audit_public_key()
                .ok_or_else(|| Failure::msg("audit signing is not configured"))?;
            let raw = audit::encode_public_key(&key);
            let vkey = tenant
                .as_deref()
                .map(|t| t.parse::<TenantId>())
                .transpose()?
                .map(|t| checkpoint::verifier_key(&ledger.checkpoint_origin(&t), &key));
            let global = checkpoint::verifier_key(&ledger.global_origin(), &key);
            crate::output::public_key(out, &raw, vkey.as_deref(), &global)?;
        }
        EvidenceCmd::VerifyBundle { .. } | EvidenceCmd::VerifyReceipt { .. } => {
            unreachable!("verified without a ledger")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a kept checkpoint: a signed note, or JSON with a `note` field.
fn read_checkpoint(path: &Path) -> cli::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::msg(format!("--checkpoint {}: {e}", path.display())))?;
    if text.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Failure::msg(format!("--checkpoint {}: {e}", path.display())))?;
        return v["note"].as_str().map(str::to_owned).ok_or_else(|| {
            Failure::msg(format!(
                "--checkpoint {}: JSON without a `note` string",
                path.display()
            ))
        });
    }
    Ok(text)
}

/// A file holding the key, or the key itself; when it is neither, both
/// reasons are given (a missing file is named as such).
fn read_key(option: &str, public_key: &str) -> cli::Result<keyledger_audit::VerifyingKey> {
    Ok(match std::fs::read_to_string(public_key) {
        Ok(text) => checkpoint::parse_public_key(&text).map_err(|e| {
            Failure::msg(format!("{option} {public_key}: the file holds no key: {e}"))
        })?,
        Err(io) => checkpoint::parse_public_key(public_key).map_err(|e| {
            Failure::msg(format!(
                "{option} {public_key}: not a readable file ({io}), nor a key ({e})"
            ))
        })?,
    })
}

fn verify_bundle(
    out: &Out,
    file: &Path,
    public_key: &str,
    checkpoints: &[PathBuf],
    witnesses: &WitnessPolicyArgs,
) -> cli::Result<ExitCode> {
    let key = read_key("--public-key", public_key)?;
    let policy = witnesses.policy()?;
    let cannot = |e: std::io::Error| Failure::msg(format!("cannot read {}: {e}", file.display()));
    let reader = std::io::BufReader::new(std::fs::File::open(file).map_err(cannot)?);
    let held = checkpoints
        .iter()
        .map(|p| read_checkpoint(p))
        .collect::<cli::Result<Vec<String>>>()?;
    // One line at a time: any bundle in bounded memory.
    let report = keyledger_audit::verify_bundle_reader(
        reader,
        &key,
        &held,
        policy.as_ref(),
        &audit::LedgerEvents,
    )
    .map_err(cannot)?;
    out.value(
        &serde_json::json!({
            "valid": report.ok(),
            "report": report,
            "summary": report.summary(),
        }),
        || {
            let mut s = String::new();
            for p in &report.problems {
                s.push_str(&format!("{}: {}\n", label(p.kind), p.message));
            }
            s.push_str(&report.summary());
            s
        },
    )?;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn label(kind: ProblemKind) -> &'static str {
    match kind {
        ProblemKind::Malformed => "MALFORMED",
        ProblemKind::Modified => "MODIFIED",
        ProblemKind::Missing => "MISSING",
        ProblemKind::Reordered => "REORDERED",
        ProblemKind::Inserted => "INSERTED",
        ProblemKind::BadSignature => "BAD SIGNATURE",
        ProblemKind::InconsistentCheckpoints => "INCONSISTENT CHECKPOINTS",
        ProblemKind::ProofFailed => "PROOF FAILED",
        ProblemKind::Unverifiable => "NOT VERIFIABLE",
        ProblemKind::Unwitnessed => "NOT WITNESSED",
    }
}

fn verify_receipt(
    out: &Out,
    file: &Path,
    key: &str,
    hash: Option<&str>,
    witnesses: &WitnessPolicyArgs,
) -> cli::Result<ExitCode> {
    let key = read_key("--key", key)?;
    let policy = witnesses.policy()?;
    let want = hash
        .map(|h| {
            keyledger_audit::proofs::parse_hash(h.trim())
                .ok_or_else(|| Failure::msg(format!("--hash {h}: not 32 bytes of hex")))
        })
        .transpose()?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::msg(format!("cannot read {}: {e}", file.display())))?;
    let checked =
        keyledger_audit::verify_receipt(&text, &key, policy.as_ref()).and_then(|c| match want {
            Some(w) if w != c.chain_hash => Err(keyledger_audit::ReceiptError::Malformed(format!(
                "the receipt is for the event with chain hash {}, not {}",
                crate::output::hex_hash(&c.chain_hash),
                crate::output::hex_hash(&w)
            ))),
            _ => Ok(c),
        });
    let (valid, value, line) = match &checked {
        Ok(c) => {
            let names: Vec<&str> = c.cosigned.iter().map(|w| w.name.as_str()).collect();
            (
                true,
                serde_json::json!({
                    "valid": true,
                    "origin": c.checkpoint.origin,
                    "size": c.checkpoint.size,
                    "position": c.position,
                    "hash": crate::output::hex_hash(&c.chain_hash),
                    "witnesses": names,
                }),
                format!(
                    "VALID: event {} (chain hash {}) is in {} of size {}{}",
                    c.position,
                    crate::output::hex_hash(&c.chain_hash),
                    c.checkpoint.origin,
                    c.checkpoint.size,
                    if names.is_empty() {
                        String::new()
                    } else {
                        format!(", cosigned by {}", names.join(", "))
                    }
                ),
            )
        }
        Err(e) => (
            false,
            serde_json::json!({"valid": false, "error": e.to_string()}),
            format!("INVALID: {e}"),
        ),
    };
    out.value(&value, || line)?;
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
