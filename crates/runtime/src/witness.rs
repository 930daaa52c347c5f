//! The witness client (C2SP [tlog-witness]): after a tenant's or the global
//! tree's checkpoint is signed and stored, it is sent to every configured witness with
//! `POST <url>/add-checkpoint` (`old <size>`, the consistency proof from
//! that size, a blank line, the signed note). Each witness has a thread of
//! its own, fed by a channel: the writer, verifications and management
//! calls never wait for a witness. Requests time out after
//! [`WITNESS_TIMEOUT`]; a witness that is down is retried with the next
//! checkpoint. A 409 (the witness holds another size, body
//! `text/x.tlog.size`) is answered by sending again from the witness's
//! size with a fresh consistency proof.
//!
//! The cosignatures that verify with the witness's configured key are
//! appended to `<checkpoint file>.cosignatures` (JSON Lines, one line per
//! witness answer: size, witness, the signed note and its cosignature
//! lines) beside the tenant's checkpoint file, whose format is unchanged,
//! and served with the checkpoint: the signed note with the cosignature
//! lines appended ([`Keyledger::witnessed_checkpoint`]), in bundles and in
//! receipts ([`Keyledger::receipt`]). The global tree's go to
//! `global-checkpoints.jsonl.cosignatures`, and the best witnessed global
//! checkpoint is what `/log/checkpoint` serves
//! ([`Keyledger::served_global_checkpoint`]).
//!
//! [tlog-witness]: https://c2sp.org/tlog-witness

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keyledger_audit::checkpoint::Checkpoint;
use keyledger_audit::cosignature::{Cosigner, check_line, signature_lines};
use keyledger_audit::receipt::Receipt;
use keyledger_core::TenantId;
use serde::{Deserialize, Serialize};

use crate::trees::{AuditState, leaf_of, proof_error};
use crate::{Error, Keyledger, Shared};

/// How long one request to a witness may take, connecting included.
pub const WITNESS_TIMEOUT: Duration = Duration::from_secs(10);
/// The suffix of the file beside a checkpoint file that holds its cosignatures.
pub const COSIGNATURES_SUFFIX: &str = ".cosignatures";
/// Checkpoints per tenant whose cosignatures are kept in memory.
const RECENT_MAX: usize = 8;
/// 409s answered by resending from the witness's size, per checkpoint.
const RESYNCS_MAX: usize = 3;
/// The largest witness answer read.
const ANSWER_BYTES_MAX: u64 = 64 * 1024;

/// A witness to send checkpoints to: its name and key (a C2SP
/// `cosignature/v1` verifier key) and its submission URL prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessTarget {
    /// The witness's name and public key.
    pub cosigner: Cosigner,
    /// The submission prefix: `add-checkpoint` is posted to `<url>/add-checkpoint`.
    pub url: String,
}

impl std::str::FromStr for WitnessTarget {
    type Err = String;

    /// Reads `<verifier key>=<url>`, e.g.
    /// `witness.example/w1+1a2b3c4d+BP…=https://witness.example/w1`.
    fn from_str(s: &str) -> Result<Self, String> {
        let at = ["=http://", "=https://"]
            .iter()
            .filter_map(|p| s.find(p))
            .min()
            .ok_or_else(|| {
                "a witness is <verifier key>=<http(s) URL>, e.g. \
                 witness.example/w1+1a2b3c4d+BP…=https://witness.example/w1"
                    .to_owned()
            })?;
        let cosigner = Cosigner::parse(&s[..at]).map_err(|e| e.to_string())?;
        let url = s[at + 1..].trim_end_matches('/').to_owned();
        Ok(WitnessTarget { cosigner, url })
    }
}

/// One witness answer as stored in `<checkpoint file>.cosignatures`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredCosignatures {
    /// The checkpoint's size.
    pub size: u64,
    /// The witness's name.
    pub witness: String,
    /// The signed note (the log's signature only).
    pub note: String,
    /// The witness's cosignature lines on it that verified, each ending in a newline.
    pub cosignatures: Vec<String>,
}

/// A stored checkpoint with the cosignatures gathered for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessedCheckpoint {
    /// Its size.
    pub size: u64,
    /// The signed note with every cosignature line appended.
    pub note: String,
    /// The witnesses that cosigned it.
    pub witnesses: Vec<String>,
}

/// A log whose checkpoints are witnessed: a tenant's, or the global tree's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum WitnessedLog {
    /// A tenant's tree.
    Tenant(TenantId),
    /// The global tree (`global.rs`).
    Global,
}

/// A checkpoint to send.
struct Submission {
    /// When it was queued (for the log line of its cosignature).
    queued: std::time::Instant,
    log: WitnessedLog,
    checkpoint: Checkpoint,
    note: String,
}

/// A recent checkpoint and its cosignature lines by witness.
#[derive(Clone, Debug)]
struct Recent {
    size: u64,
    origin: String,
    note: String,
    lines: BTreeMap<String, Vec<String>>,
}

/// The witness client's state: the channels to the witness threads and
/// the recent cosigned checkpoints.
#[derive(Default)]
pub(crate) struct Witnessing {
    senders: Mutex<Vec<mpsc::Sender<Arc<Submission>>>>,
    recent: Mutex<HashMap<WitnessedLog, Vec<Recent>>>,
    /// Logs whose cosignature file was read into `recent`.
    loaded: Mutex<HashSet<WitnessedLog>>,
    /// One append to a cosignature file at a time.
    append: Mutex<()>,
}

impl Witnessing {
    /// Queues a freshly stored checkpoint for every witness.
    pub(crate) fn submit(&self, log: &WitnessedLog, checkpoint: &Checkpoint, note: &str) {
        let senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        if senders.is_empty() {
            return;
        }
        let s = Arc::new(Submission {
            queued: std::time::Instant::now(),
            log: log.clone(),
            checkpoint: checkpoint.clone(),
            note: note.to_owned(),
        });
        for tx in senders.iter() {
            let _ = tx.send(s.clone());
        }
    }

    /// Closes the channels: each witness thread sends what is queued, then ends.
    pub(crate) fn close(&self) {
        self.senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn remember(&self, log: &WitnessedLog, s: &StoredCosignatures) {
        let Ok(c) = keyledger_audit::checkpoint::parse_unverified(&s.note) else {
            return;
        };
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let list = recent.entry(log.clone()).or_default();
        match list.iter_mut().find(|r| r.note == s.note) {
            Some(r) => {
                r.lines.insert(s.witness.clone(), s.cosignatures.clone());
            }
            None => {
                list.push(Recent {
                    size: s.size,
                    origin: c.origin,
                    note: s.note.clone(),
                    lines: BTreeMap::from([(s.witness.clone(), s.cosignatures.clone())]),
                });
                list.sort_by_key(|r| r.size);
                if list.len() > RECENT_MAX {
                    list.remove(0);
                }
            }
        }
    }
}

impl AuditState {
    /// The file of a log's cosignatures (beside its checkpoint file).
    fn cosignature_path(&self, log: &WitnessedLog) -> Result<PathBuf, Error> {
        let checkpoints = match log {
            WitnessedLog::Tenant(tenant) => self.checkpoint_path(tenant)?,
            WitnessedLog::Global => self
                .signer()?
                .config
                .dir
                .join(crate::global::GLOBAL_CHECKPOINT_FILE),
        };
        let mut p = checkpoints.into_os_string();
        p.push(COSIGNATURES_SUFFIX);
        Ok(PathBuf::from(p))
    }

    /// Reads the log's cosignature file into memory, once.
    fn load_cosignatures(&self, log: &WitnessedLog) -> Result<(), Error> {
        if self
            .witnessing
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(log)
        {
            return Ok(());
        }
        let path = self.cosignature_path(log)?;
        match std::fs::File::open(&path) {
            Ok(file) => {
                use std::io::BufRead as _;
                // A torn or foreign line is skipped: the file is evidence
                // gathered, not the log.
                for line in std::io::BufReader::new(file).lines() {
                    let line = line.map_err(|e| Error::io(path.display().to_string(), e))?;
                    if let Ok(s) = serde_json::from_str::<StoredCosignatures>(&line) {
                        self.witnessing.remember(log, &s);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(path.display().to_string(), e)),
        }
        self.witnessing
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(log.clone());
        Ok(())
    }

    /// Appends a witness's answer to the log's cosignature file, durably.
    fn store_cosignatures(&self, log: &WitnessedLog, s: &StoredCosignatures) -> Result<(), Error> {
        self.load_cosignatures(log)?;
        let path = self.cosignature_path(log)?;
        let io = |e: std::io::Error| Error::io(path.display().to_string(), e);
        let line = serde_json::to_string(s).map_err(|e| Error::unavailable(e.to_string()))?;
        {
            let _one = self
                .witnessing
                .append
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let mut file =
                crate::datadir::open_no_follow(&mut crate::datadir::append_private(), &path)
                    .map_err(io)?;
            file.write_all(format!("{line}\n").as_bytes())
                .and_then(|()| file.sync_data())
                .map_err(io)?;
        }
        self.witnessing.remember(log, s);
        Ok(())
    }

    /// The largest size `witness` cosigned for `origin`, as far as this
    /// data directory knows.
    fn last_cosigned(&self, log: &WitnessedLog, origin: &str, witness: &str) -> Option<u64> {
        self.load_cosignatures(log).ok()?;
        let recent = self
            .witnessing
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        recent
            .get(log)?
            .iter()
            .filter(|r| r.origin == origin && r.lines.contains_key(witness))
            .map(|r| r.size)
            .max()
    }

    /// The log's best witnessed checkpoint of `origin`: the one with the
    /// most witnesses, the largest among those.
    pub(crate) fn witnessed(
        &self,
        log: &WitnessedLog,
        origin: &str,
    ) -> Result<Option<WitnessedCheckpoint>, Error> {
        if self.signer.is_none() {
            return Ok(None);
        }
        self.load_cosignatures(log)?;
        let recent = self
            .witnessing
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let best = recent
            .get(log)
            .into_iter()
            .flatten()
            .filter(|r| r.origin == origin)
            .max_by_key(|r| (r.lines.len(), r.size));
        Ok(best.map(|r| {
            let mut note = r.note.clone();
            for line in r.lines.values().flatten() {
                note.push_str(line);
            }
            WitnessedCheckpoint {
                size: r.size,
                note,
                witnesses: r.lines.keys().cloned().collect(),
            }
        }))
    }
}

/// Starts one thread per configured witness.
pub(crate) fn start(shared: &Arc<Shared>) -> Result<(), Error> {
    let mut senders = Vec::new();
    for target in &shared.config.witnesses {
        let (tx, rx) = mpsc::channel();
        let weak = Arc::downgrade(shared);
        let target = target.clone();
        std::thread::Builder::new()
            .name(format!("keyledger-witness-{}", target.cosigner.name))
            .spawn(move || run(&weak, &target, &rx))
            .map_err(|e| Error::io("cannot start a witness thread", e))?;
        senders.push(tx);
    }
    *shared
        .audit
        .witnessing
        .senders
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = senders;
    Ok(())
}

/// A witness thread: sends each tenant's newest queued checkpoint, until
/// the channel closes.
fn run(shared: &Weak<Shared>, target: &WitnessTarget, rx: &mpsc::Receiver<Arc<Submission>>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WITNESS_TIMEOUT))
        .build()
        .new_agent();
    // The witness's size per origin, as learnt from its answers.
    let mut known: HashMap<String, u64> = HashMap::new();
    while let Ok(first) = rx.recv() {
        // Only each origin's newest checkpoint matters: a witness that was
        // slow gets the latest, not a backlog.
        let mut latest: BTreeMap<String, Arc<Submission>> = BTreeMap::new();
        for s in std::iter::once(first).chain(rx.try_iter()) {
            match latest.get(&s.checkpoint.origin) {
                Some(l) if l.checkpoint.size > s.checkpoint.size => {}
                _ => {
                    latest.insert(s.checkpoint.origin.clone(), s);
                }
            }
        }
        for s in latest.values() {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            submit(&shared, &agent, target, &mut known, s);
        }
    }
}

/// The body of an `add-checkpoint` request.
fn add_checkpoint_body(old: u64, proof: &[keyledger_audit::Hash], note: &str) -> String {
    let mut body = format!("old {old}\n");
    for h in proof {
        body.push_str(&B64.encode(h));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(note);
    body
}

/// Sends one checkpoint to one witness, resyncing on a 409, and stores the
/// cosignatures that verify.
fn submit(
    shared: &Shared,
    agent: &ureq::Agent,
    target: &WitnessTarget,
    known: &mut HashMap<String, u64>,
    s: &Submission,
) {
    let name = target.cosigner.name.as_str();
    let origin = s.checkpoint.origin.as_str();
    let size = s.checkpoint.size;
    let mut old = known
        .get(origin)
        .copied()
        .or_else(|| shared.audit.last_cosigned(&s.log, origin, name))
        .unwrap_or(0);
    let url = format!("{}/add-checkpoint", target.url);
    for _ in 0..=RESYNCS_MAX {
        if old > size {
            // The witness has seen a larger checkpoint (of a later run):
            // the next one sent will be at least as large.
            tracing::debug!(
                witness = name,
                origin,
                size,
                witness_size = old,
                "witness is ahead"
            );
            return;
        }
        let proof = if old == 0 || old == size {
            Ok(Vec::new())
        } else {
            match &s.log {
                WitnessedLog::Tenant(tenant) => shared.audit.with_tree(tenant, |t| {
                    t.consistency_proof(old, size).map_err(proof_error)
                }),
                WitnessedLog::Global => shared.audit.global_consistency_proof(old, size),
            }
        };
        let proof = match proof {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(witness = name, origin, old, size, error = %e, "no consistency proof for the witness");
                return;
            }
        };
        let body = add_checkpoint_body(old, &proof, &s.note);
        let answer = agent
            .post(&url)
            .header("Content-Type", "text/plain; charset=utf-8")
            .send(body.as_bytes());
        let mut answer = match answer {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(witness = name, url = %url, origin, size, error = %e, "the witness did not answer; the next checkpoint is sent again");
                return;
            }
        };
        let status = answer.status().as_u16();
        let text = answer
            .body_mut()
            .with_config()
            .limit(ANSWER_BYTES_MAX)
            .read_to_string()
            .unwrap_or_default();
        match status {
            200 => {
                let checkpoint_text = s.checkpoint.text();
                let lines: Vec<String> = signature_lines(&format!("x\n\n{text}"))
                    .into_iter()
                    .filter(|l| {
                        matches!(
                            check_line(&checkpoint_text, l, &target.cosigner),
                            Ok(Some(_))
                        )
                    })
                    .map(|l| {
                        let mut l = l.to_owned();
                        if !l.ends_with('\n') {
                            l.push('\n');
                        }
                        l
                    })
                    .collect();
                known.insert(origin.to_owned(), size);
                if lines.is_empty() {
                    tracing::warn!(
                        witness = name,
                        origin,
                        size,
                        "the witness answered without a cosignature that verifies with its key"
                    );
                    return;
                }
                let stored = StoredCosignatures {
                    size,
                    witness: name.to_owned(),
                    note: s.note.clone(),
                    cosignatures: lines,
                };
                match shared.audit.store_cosignatures(&s.log, &stored) {
                    Ok(()) => tracing::debug!(
                        witness = name,
                        origin,
                        size,
                        queued_to_stored_us = s.queued.elapsed().as_micros() as u64,
                        "checkpoint cosigned"
                    ),
                    Err(e) => {
                        tracing::warn!(witness = name, origin, size, error = %e, "storing a cosignature failed")
                    }
                }
                return;
            }
            409 => {
                let theirs = text.trim_end_matches('\n').parse::<u64>().ok();
                match theirs {
                    Some(theirs) if theirs != old => {
                        tracing::info!(
                            witness = name,
                            origin,
                            size,
                            old,
                            witness_size = theirs,
                            "the witness holds another size: resending from it"
                        );
                        known.insert(origin.to_owned(), theirs);
                        old = theirs;
                    }
                    _ => {
                        tracing::warn!(witness = name, origin, size, old, answer = %text.trim(), "the witness refused the checkpoint (409)");
                        return;
                    }
                }
            }
            _ => {
                tracing::warn!(witness = name, origin, size, old, status, answer = %text.trim(), "the witness refused the checkpoint");
                return;
            }
        }
    }
}

/// A receipt, or when one can be fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiptAnswer {
    /// The receipt: a C2SP tlog-proof.
    Ready {
        /// Its text.
        text: String,
        /// The size of the checkpoint it holds.
        size: u64,
        /// The witnesses that cosigned that checkpoint.
        witnesses: Vec<String>,
    },
    /// No stored (and, with witnesses configured, cosigned) checkpoint
    /// covers the position yet; the next one is due within `retry_after`.
    NotYet {
        /// The size of the best checkpoint there is.
        covered: u64,
        /// When to ask again.
        retry_after: Duration,
    },
}

impl Keyledger {
    /// The tenant's best witnessed checkpoint in its current epoch (the
    /// signed note with its cosignature lines), if any witness cosigned one.
    pub fn witnessed_checkpoint(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<WitnessedCheckpoint>, Error> {
        self.shared.audit.witnessed(
            &WitnessedLog::Tenant(tenant.clone()),
            &self.checkpoint_origin(tenant),
        )
    }

    /// A receipt (C2SP tlog-proof) for the tenant's event at `position`:
    /// the best witnessed checkpoint that covers it with its cosignatures,
    /// or without witnesses configured the newest stored checkpoint, and
    /// the event's inclusion proof against it. A position outside the
    /// tree is a bad request.
    pub fn receipt(&self, tenant: &TenantId, position: u64) -> Result<ReceiptAnswer, Error> {
        let events = self.tree_size(tenant);
        if position == 0 || position > events {
            return Err(crate::BadRequest::NotInTree {
                seq: position,
                size: events,
                events,
            }
            .into());
        }
        let audit = &self.shared.audit;
        let best = if self.shared.config.witnesses.is_empty() {
            let path = audit.checkpoint_path(tenant)?;
            crate::integrity::newest_checkpoint(&path)
                .map_err(|e| Error::unavailable(format!("{}: {e}", path.display())))?
                .filter(|c| {
                    c.note
                        .starts_with(&format!("{}\n", self.checkpoint_origin(tenant)))
                })
                .map(|c| WitnessedCheckpoint {
                    size: c.size,
                    note: c.note,
                    witnesses: Vec::new(),
                })
        } else {
            self.witnessed_checkpoint(tenant)?
        };
        let covered = best.as_ref().map_or(0, |b| b.size);
        let Some(best) = best.filter(|b| b.size >= position) else {
            let debounce = audit
                .signer
                .as_ref()
                .map_or(Duration::from_secs(1), |s| s.config.checkpoint_debounce);
            return Ok(ReceiptAnswer::NotYet {
                covered,
                retry_after: debounce
                    + if self.shared.config.witnesses.is_empty() {
                        Duration::ZERO
                    } else {
                        WITNESS_TIMEOUT.min(Duration::from_secs(2))
                    },
            });
        };
        let raw = self.shared.log.read_tenant_raw(tenant, position - 1, 1)?;
        let raw = raw.into_iter().find(|r| r.seq == position).ok_or_else(|| {
            Error::inconsistent(format!(
                "tenant {tenant}: event {position} is in the tree but not in the log"
            ))
        })?;
        let (leaf, proof) = audit.with_tree(tenant, |t| {
            Ok((
                t.leaf(position - 1).map_err(proof_error)?,
                t.inclusion_proof(position - 1, best.size)
                    .map_err(proof_error)?,
            ))
        })?;
        if leaf != Some(leaf_of(&raw.hash)) {
            return Err(Error::inconsistent(format!(
                "tenant {tenant}: event {position}'s stored hash is not its leaf in the tree"
            )));
        }
        let receipt = Receipt {
            chain_hash: raw.hash,
            index: position - 1,
            proof,
            note: best.note,
        };
        Ok(ReceiptAnswer::Ready {
            text: receipt.to_text(),
            size: best.size,
            witnesses: best.witnesses,
        })
    }
}

impl Keyledger {
    /// Revokes a key as [`Keyledger::revoke_key`] does (and, with `wait`,
    /// waits for every live node as [`Keyledger::revoke_key_everywhere`]
    /// does), and also returns the tenant sequence number of the
    /// revocation: the position a receipt is asked for.
    pub async fn revoke_key_at(
        &self,
        principal: keyledger_core::Principal,
        key_id: keyledger_core::KeyId,
        reason: keyledger_core::RevokeReason,
        wait: Option<Duration>,
    ) -> Result<(keyledger_core::KeyRecord, u64), Error> {
        let tenant = principal.tenant.clone();
        let records = self
            .execute(keyledger_core::Command::RevokeKey(
                keyledger_core::RevokeKey {
                    principal,
                    key_id,
                    reason,
                },
            ))
            .await?;
        let seq = records.iter().map(|r| r.seq).max().unwrap_or(0);
        if let Some(timeout) = wait {
            let position = records.iter().map(|r| r.position).max().unwrap_or(0);
            self.wait_enforced_everywhere(position, timeout).await?;
        }
        Ok((self.key(&tenant, key_id)?, seq))
    }
}

impl Keyledger {
    /// The global tree's best witnessed checkpoint under its current
    /// origin (the signed note with its cosignature lines), if any witness
    /// cosigned one.
    pub fn witnessed_global_checkpoint(&self) -> Result<Option<WitnessedCheckpoint>, Error> {
        self.shared
            .audit
            .witnessed(&WitnessedLog::Global, &self.global_origin())
    }
}

impl Keyledger {
    /// The global checkpoint a tlog client reads at `/log/checkpoint`: with
    /// witnesses configured, the best witnessed one (its cosignature lines
    /// appended, as C2SP tlog-checkpoint allows), once one is cosigned;
    /// otherwise the newest signed one, as [`Keyledger::global_checkpoint`].
    pub fn served_global_checkpoint(&self) -> Result<String, Error> {
        if !self.shared.config.witnesses.is_empty()
            && let Some(w) = self.witnessed_global_checkpoint()?
        {
            return Ok(w.note);
        }
        Ok(self.global_checkpoint()?.note)
    }
}

/// The bundle's `witnessed` checkpoint (the tenant's best witnessed one
/// in its current epoch) if it is no larger than the bundle's tree `t` of
/// `size` leaves, with its consistency proof to it.
pub(crate) fn bundle_witnessed(
    witnessed: Option<&WitnessedCheckpoint>,
    t: &crate::tilestore::TiledTree,
    size: u64,
) -> Result<Option<keyledger_audit::BundleEarlier>, Error> {
    let Some(w) = witnessed else {
        return Ok(None);
    };
    if w.size > size {
        return Ok(None);
    }
    let proof = t.consistency_proof(w.size, size).map_err(proof_error)?;
    Ok(Some(keyledger_audit::BundleEarlier {
        checkpoint: w.note.clone(),
        consistency_proof: keyledger_audit::proofs::hex_hashes(&proof),
    }))
}
