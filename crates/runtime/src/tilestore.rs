//! Merkle tree nodes out of memory (issue 13): each tree (every tenant's,
//! and the global tree) keeps in memory only its right edge, the
//! *frontier*, and reads its older nodes from a node store on disk,
//! `<data>/merkle.redb` ([`NODE_FILE`]).
//!
//! * Layout: C2SP tlog-tiles. Tile level `L`, index `N` holds the 256 tree
//!   nodes of tree level `8·L` from index `256·N`: exactly the bytes of the
//!   tile `tile/L/N`. A tile is written once, when it is complete, and never
//!   changes. The global tree's entries (chain hashes) are kept the same
//!   way, in bundles of 256 ("level" [`ENTRIES`]).
//! * Frontier: per tile level, the partial tile (at most 255 nodes, with
//!   their inner levels): at most one partial tile per level. A tree of `n`
//!   leaves holds `Σ_L ((n >> 8L) mod 256)` hashes in memory, twice that
//!   with the inner nodes: at most ~16 KiB a level.
//! * Reads: a tile read from disk is checked before use: the root of its
//!   256 nodes must be its parent node, read the same way from the tile
//!   above, up to the frontier, which is in memory (from the replay, or
//!   from a snapshot verified before use). A tile that fails is never
//!   used: the proof asked for fails ([`ProofError::Unavailable`], an
//!   error, not a smaller or different tree), the store is marked damaged,
//!   and the next open rebuilds it from the log. Checked tiles are kept in
//!   a small cache (quick_cache, [`CACHE_TILES`] tiles).
//! * Writes: complete tiles are staged by [`TiledTree::push`] and written
//!   by [`NodeStore::flush`] in one transaction per group commit, not
//!   durable (a crash loses them, and the replay of the log's tail writes
//!   them again); [`NodeStore::sync`] makes them durable and records the
//!   log position they cover, before a snapshot that relies on them is
//!   written. A snapshot covering more than the store holds is not used.
//! * With no data directory (or when the file cannot be opened), the same
//!   store is kept in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use keyledger_audit::merkle::{self, Hash, ProofError, Subtrees, Tree};
use quick_cache::sync::Cache;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// The node store's file in the data directory.
pub const NODE_FILE: &str = "merkle.redb";
/// The "level" under which the global tree's entry bundles are stored.
pub const ENTRIES: u32 = u32::MAX;
/// Hashes (and entries) in a full tile.
const WIDTH: u64 = keyledger_audit::tiles::TILE_WIDTH;
/// Tiles (checked, with their inner nodes: 16 KiB each) kept in memory.
pub const CACHE_TILES: usize = 512;
/// redb's page cache for the node file.
const FILE_CACHE_BYTES: usize = 8 << 20;
/// Tiles written without a durable commit before one is made anyway
/// (space in a redb file is reused only after a durable commit).
const DURABLE_EVERY_TILES: u64 = 1024;

/// (tree, tile level or [`ENTRIES`], tile index) → the tile's bytes.
const TILES: TableDefinition<(&str, u32, u64), &[u8]> = TableDefinition::new("tiles");
/// "synced": the log position the durable tiles cover; "damaged": 1 once a
/// tile read back did not match its tree.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A checked tile.
enum Cached {
    /// A hash tile with its inner nodes (a tree of its 256 hashes).
    Hashes(Tree),
    /// An entry bundle.
    Entries(Vec<Hash>),
}

/// Staged tile: tree name, level, index, bytes.
type Staged = (Arc<str>, u32, u64, Vec<u8>);

/// The store of complete tiles: a redb file (or redb in memory).
pub(crate) struct NodeStore {
    db: Database,
    file: Option<PathBuf>,
    /// By (tree instance, level, index).
    cache: Cache<(u64, u32, u64), Arc<Cached>>,
    staged: Mutex<Vec<Staged>>,
    /// Tiles written since the last durable commit.
    undurable: AtomicU64,
    /// The log position the durable tiles cover (read at open).
    synced: AtomicU64,
    damaged: AtomicBool,
}

impl std::fmt::Debug for NodeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStore")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Tree instances, for the cache's keys: two trees of one name (a replay
/// beside a snapshot's) never share cached tiles.
static INSTANCES: AtomicU64 = AtomicU64::new(1);

fn unavailable(what: impl std::fmt::Display) -> ProofError {
    ProofError::Unavailable(what.to_string())
}

impl NodeStore {
    fn with_db(db: Database, file: Option<PathBuf>) -> NodeStore {
        let synced = read_meta(&db, "synced").unwrap_or(0);
        NodeStore {
            db,
            file,
            cache: Cache::new(CACHE_TILES),
            staged: Mutex::new(Vec::new()),
            undurable: AtomicU64::new(0),
            synced: AtomicU64::new(synced),
            damaged: AtomicBool::new(false),
        }
    }

    /// A store in memory (no data directory).
    pub(crate) fn in_memory() -> NodeStore {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .ok();
        match db {
            Some(db) => NodeStore::with_db(db, None),
            // redb in memory does not fail to open; if it did, nothing
            // could be stored: every old proof would fail, never be wrong.
            None => unreachable_store(),
        }
    }

    /// The store in `dir` ([`NODE_FILE`]). A file that does not open, or
    /// that a read found damaged, is removed and made anew (empty: no
    /// snapshot is then used, and the replay writes every tile again). If
    /// none can be made there, the store is kept in memory.
    pub(crate) fn open(dir: &Path) -> NodeStore {
        let path = dir.join(NODE_FILE);
        match open_file(&path, FILE_CACHE_BYTES) {
            Ok(db) if read_meta(&db, "damaged").unwrap_or(0) == 0 => {
                return NodeStore::with_db(db, Some(path));
            }
            Ok(db) => {
                drop(db);
                tracing::warn!(file = %path.display(),
                    "the Merkle node store was found damaged; rebuilding it from the log");
            }
            // Damaged (or of another layout): made anew.
            Err(OpenError::Database(
                e @ (redb::DatabaseError::Storage(redb::StorageError::Corrupted(_))
                | redb::DatabaseError::UpgradeRequired(_)),
            )) => {
                tracing::warn!(file = %path.display(), error = %e,
                    "cannot open the Merkle node store; rebuilding it from the log");
            }
            // Not the file's fault (open in another process, no access):
            // left as it is.
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e,
                    "cannot open the Merkle node store; keeping the tree nodes in memory");
                return NodeStore::in_memory();
            }
        }
        let _ = std::fs::remove_file(&path);
        match open_file(&path, FILE_CACHE_BYTES) {
            Ok(db) => NodeStore::with_db(db, Some(path)),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e,
                    "cannot make the Merkle node store; keeping the tree nodes in memory");
                NodeStore::in_memory()
            }
        }
    }

    /// The log position the store's durable tiles cover.
    pub(crate) fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether a snapshot of the log up to `position` can be used with
    /// this store: its trees' complete tiles must be here (there are none
    /// before position 256: the global tree holds every event).
    pub(crate) fn covers(&self, position: u64) -> Result<(), String> {
        if position < WIDTH || self.synced() >= position {
            return Ok(());
        }
        Err(format!(
            "the Merkle node store ({}) holds the trees' tiles up to log position {}, not up              to the snapshot's",
            self.file
                .as_ref()
                .map_or_else(|| "in memory".to_owned(), |f| f.display().to_string()),
            self.synced()
        ))
    }

    fn stage(
        &self,
        tree: &Arc<str>,
        instance: u64,
        level: u32,
        index: u64,
        bytes: Vec<u8>,
        t: Cached,
    ) {
        self.cache.insert((instance, level, index), Arc::new(t));
        self.staged.lock().unwrap_or_else(|e| e.into_inner()).push((
            tree.clone(),
            level,
            index,
            bytes,
        ));
    }

    /// Writes the staged tiles (one transaction, not durable unless many
    /// were written since the last durable one).
    pub(crate) fn flush(&self) -> Result<(), String> {
        // Held while writing: a concurrent `sync` cannot take tiles that a
        // reader then looks for before they are written.
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        if staged.is_empty() {
            return Ok(());
        }
        let n = staged.len() as u64;
        let durable = self.undurable.fetch_add(n, Ordering::AcqRel) + n >= DURABLE_EVERY_TILES;
        self.write(&staged, durable, None)?;
        staged.clear();
        if durable {
            self.undurable.store(0, Ordering::Release);
        }
        Ok(())
    }

    /// Writes the staged tiles and makes every tile durable, recording
    /// that they cover the log up to `position`.
    pub(crate) fn sync(&self, position: u64) -> Result<(), String> {
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        self.write(&staged, true, Some(position))?;
        staged.clear();
        self.undurable.store(0, Ordering::Release);
        self.synced.fetch_max(position, Ordering::AcqRel);
        Ok(())
    }

    fn write(&self, tiles: &[Staged], durable: bool, synced: Option<u64>) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| format!("cannot write the Merkle node store: {e}");
        let mut txn = self.db.begin_write().map_err(|x| e(&x))?;
        if !durable {
            txn.set_durability(redb::Durability::None)
                .map_err(|x| e(&x))?;
        }
        {
            let mut table = txn.open_table(TILES).map_err(|x| e(&x))?;
            for (tree, level, index, bytes) in tiles {
                let key = (&**tree, *level, *index);
                // A replay writes again what is stored: left as it is
                // (a tile never changes; a rewrite would only grow the file).
                let same = table
                    .get(key)
                    .map_err(|x| e(&x))?
                    .is_some_and(|v| v.value() == bytes.as_slice());
                if !same {
                    table.insert(key, bytes.as_slice()).map_err(|x| e(&x))?;
                }
            }
            if let Some(position) = synced {
                let mut meta = txn.open_table(META).map_err(|x| e(&x))?;
                let old = meta.get("synced").map_err(|x| e(&x))?.map(|v| v.value());
                meta.insert("synced", position.max(old.unwrap_or(0)))
                    .map_err(|x| e(&x))?;
            }
        }
        txn.commit().map_err(|x| e(&x))
    }

    fn read(&self, tree: &str, level: u32, index: u64) -> Result<Option<Vec<u8>>, String> {
        let e = |e: &dyn std::fmt::Display| format!("cannot read the Merkle node store: {e}");
        let txn = self.db.begin_read().map_err(|x| e(&x))?;
        let table = match txn.open_table(TILES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(x) => return Err(e(&x)),
        };
        Ok(table
            .get((tree, level, index))
            .map_err(|x| e(&x))?
            .map(|v| v.value().to_vec()))
    }

    /// A tile read back is not what its tree holds: nothing is answered
    /// from it, and the next open rebuilds the store from the log.
    fn damaged(&self, what: &str) -> ProofError {
        if !self.damaged.swap(true, Ordering::AcqRel) {
            tracing::error!(file = ?self.file, problem = what,
                "the Merkle node store is damaged; proofs that need it are refused until a restart rebuilds it from the log");
            let marked = (|| -> Result<(), redb::Error> {
                let txn = self.db.begin_write()?;
                {
                    let mut meta = txn.open_table(META)?;
                    meta.insert("damaged", 1)?;
                }
                txn.commit()?;
                Ok(())
            })();
            if let Err(e) = marked {
                tracing::warn!(error = %e, "cannot mark the Merkle node store damaged");
            }
        }
        unavailable(format!(
            "the Merkle node store is damaged ({what}); a restart rebuilds it from the log"
        ))
    }

    /// Whether a read found the store damaged since it was opened.
    pub(crate) fn is_damaged(&self) -> bool {
        self.damaged.load(Ordering::Acquire)
    }
}

impl Default for NodeStore {
    fn default() -> Self {
        NodeStore::in_memory()
    }
}

#[allow(clippy::panic)]
fn unreachable_store() -> NodeStore {
    panic!("redb cannot open a database in memory")
}

/// Why a derived redb file did not open (also `usagestore.rs`'s).
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Database(#[from] redb::DatabaseError),
}

/// Opens or creates a derived redb file (never through a link, owner
/// only) with a page cache of `cache_bytes`.
pub(crate) fn open_file(path: &Path, cache_bytes: usize) -> Result<Database, OpenError> {
    let file = keyledger_store::no_follow::open(
        &mut keyledger_store::no_follow::read_write_private(),
        path,
    )?;
    let backend = redb::backends::FileBackend::new(file)?;
    Ok(Database::builder()
        .set_cache_size(cache_bytes)
        .create_with_backend(backend)?)
}

fn read_meta(db: &Database, key: &str) -> Option<u64> {
    let txn = db.begin_read().ok()?;
    let table = txn.open_table(META).ok()?;
    Some(table.get(key).ok()??.value())
}

/// A Merkle tree whose complete tiles are in a [`NodeStore`]: in memory,
/// its size and frontier (and, for the global tree, its last partial
/// bundle of entries).
#[derive(Clone)]
pub(crate) struct TiledTree {
    store: Arc<NodeStore>,
    name: Arc<str>,
    /// The cache's key for this tree (shared by its clones).
    instance: u64,
    size: u64,
    /// `frontier[L]`: the partial tile of tile level `L` (its nodes of tree
    /// level `8·L` from index `256·⌊(size >> 8L) / 256⌋`), one per level
    /// that has a node.
    frontier: Vec<Tree>,
    /// The global tree's entries after the last full bundle.
    entries: Option<Vec<Hash>>,
}

impl PartialEq for TiledTree {
    /// The frontier commits to every node (its top level holds every node
    /// of its tree level), so equal frontiers are equal trees.
    fn eq(&self, other: &Self) -> bool {
        self.size == other.size && self.frontier == other.frontier && self.entries == other.entries
    }
}

impl Eq for TiledTree {}

impl std::fmt::Debug for TiledTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TiledTree")
            .field("name", &self.name)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The name under which the global tree's tiles are stored.
pub(crate) const GLOBAL_NAME: &str = "g";

/// The name under which a tenant's tiles are stored.
pub(crate) fn tenant_name(tenant: &keyledger_core::TenantId) -> Arc<str> {
    Arc::from(format!("t/{tenant}"))
}

impl TiledTree {
    /// An empty tree named `name` in `store`; `entries`: it keeps its
    /// entries too (the global tree).
    pub(crate) fn new(store: Arc<NodeStore>, name: Arc<str>, entries: bool) -> TiledTree {
        TiledTree {
            store,
            name,
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            size: 0,
            frontier: Vec::new(),
            entries: entries.then(Vec::new),
        }
    }

    /// Its node store.
    #[cfg(test)]
    pub(crate) fn store(&self) -> &Arc<NodeStore> {
        &self.store
    }

    /// Whether a read found its node store damaged.
    pub(crate) fn nodes_damaged(&self) -> bool {
        self.store.is_damaged()
    }

    /// Leaves in the tree.
    pub(crate) fn len(&self) -> u64 {
        self.size
    }

    /// Whether the tree has no leaf.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Appends a leaf hash (and, for the global tree, its entry). Complete
    /// tiles are staged for [`NodeStore::flush`].
    pub(crate) fn push(&mut self, leaf: Hash, entry: Option<&Hash>) {
        if let (Some(tail), Some(e)) = (&mut self.entries, entry) {
            tail.push(*e);
            if tail.len() as u64 == WIDTH {
                let bundle = std::mem::take(tail);
                self.store.stage(
                    &self.name,
                    self.instance,
                    ENTRIES,
                    self.size / WIDTH,
                    bundle.concat(),
                    Cached::Entries(bundle),
                );
            }
        }
        self.size += 1;
        let mut node = leaf;
        let mut level = 0usize;
        loop {
            if self.frontier.len() == level {
                self.frontier.push(Tree::new());
            }
            self.frontier[level].push_leaf_hash(node);
            if self.frontier[level].len() < WIDTH {
                return;
            }
            let tile = std::mem::take(&mut self.frontier[level]);
            let index = (self.size >> (8 * level)) / WIDTH - 1;
            node = tile.node(8, 0).unwrap_or_default();
            let bytes = tile
                .levels()
                .first()
                .map(|l| l.concat())
                .unwrap_or_default();
            self.store.stage(
                &self.name,
                self.instance,
                level as u32,
                index,
                bytes,
                Cached::Hashes(tile),
            );
            level += 1;
        }
    }

    /// The full tile of tile level `level`, index `index`, read (and
    /// checked against its parent) if it is not cached.
    fn full_tile(&self, level: u32, index: u64) -> Result<Arc<Cached>, ProofError> {
        let key = (self.instance, level, index);
        if let Some(t) = self.store.cache.get(&key) {
            return Ok(t);
        }
        let where_ = format!("{} tile {level}/{index}", self.name);
        let bytes = self
            .store
            .read(&self.name, level, index)
            .map_err(unavailable)?
            .ok_or_else(|| self.store.damaged(&format!("{where_} is missing")))?;
        if bytes.len() as u64 != 32 * WIDTH {
            return Err(self
                .store
                .damaged(&format!("{where_} has {} bytes", bytes.len())));
        }
        let hashes = bytes
            .chunks_exact(32)
            .map(|c| c.try_into().unwrap_or([0; 32]));
        let tile = if level == ENTRIES {
            Cached::Entries(hashes.collect())
        } else {
            let mut t = Tree::new();
            for h in hashes {
                t.push_leaf_hash(h);
            }
            let parent = self.complete(8 * (level + 1), index)?;
            if t.node(8, 0) != Some(parent) {
                return Err(self
                    .store
                    .damaged(&format!("{where_} does not hash to its parent node")));
            }
            Cached::Hashes(t)
        };
        let tile = Arc::new(tile);
        self.store.cache.insert(key, tile.clone());
        Ok(tile)
    }

    /// The leaf hash at `index`.
    pub(crate) fn leaf(&self, index: u64) -> Result<Option<Hash>, ProofError> {
        if index >= self.size {
            return Ok(None);
        }
        self.complete(0, index).map(Some)
    }

    /// The global tree's entry at `index` (checked against its leaf).
    pub(crate) fn entry(&self, index: u64) -> Result<Option<Hash>, ProofError> {
        let Some(tail) = &self.entries else {
            return Ok(None);
        };
        if index >= self.size {
            return Ok(None);
        }
        let bundle = index / WIDTH;
        let at = (index % WIDTH) as usize;
        let entry = if bundle == self.size / WIDTH {
            tail.get(at).copied()
        } else {
            match &*self.full_tile(ENTRIES, bundle)? {
                Cached::Entries(e) => e.get(at).copied(),
                Cached::Hashes(_) => None,
            }
        };
        let Some(entry) = entry else {
            return Ok(None);
        };
        if crate::trees::leaf_of(&entry) != self.complete(0, index)? {
            return Err(self
                .store
                .damaged(&format!("{} entry {index} is not its leaf's", self.name)));
        }
        Ok(Some(entry))
    }

    /// The root of the first `size` leaves.
    pub(crate) fn root(&self, size: u64) -> Result<Hash, ProofError> {
        merkle::root(self, size)
    }

    /// See [`Tree::inclusion_proof`].
    pub(crate) fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        merkle::inclusion_proof(self, index, size)
    }

    /// See [`Tree::consistency_proof`].
    pub(crate) fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        merkle::consistency_proof(self, old, new)
    }

    /// See [`Tree::range_proof`].
    pub(crate) fn range_proof(
        &self,
        begin: u64,
        end: u64,
        size: u64,
    ) -> Result<Vec<Hash>, ProofError> {
        merkle::range_proof(self, begin, end, size)
    }

    /// For a snapshot: appends the frontier's nodes (per tile level, its
    /// partial tile's), then any partial bundle of entries, to `nodes`.
    /// How many there are follows from the size.
    pub(crate) fn to_snapshot(&self, nodes: &mut Vec<u8>) {
        for t in &self.frontier {
            for h in t.levels().first().map_or(&[][..], |l| l) {
                nodes.extend_from_slice(h);
            }
        }
        for e in self.entries.iter().flatten() {
            nodes.extend_from_slice(e);
        }
    }

    /// The tree of `size` leaves [`TiledTree::to_snapshot`] saved, its
    /// older nodes in `store`. Fails, naming what is wrong, when there are
    /// too few nodes.
    pub(crate) fn from_snapshot(
        store: Arc<NodeStore>,
        name: Arc<str>,
        entries: bool,
        size: u64,
        nodes: &mut std::slice::ChunksExact<'_, u8>,
    ) -> Result<TiledTree, String> {
        let mut t = TiledTree::new(store, name, entries);
        t.size = size;
        let mut level = 0u32;
        while size.checked_shr(8 * level).unwrap_or(0) > 0 {
            let count = (size >> (8 * level)) % WIDTH;
            let mut partial = Tree::new();
            for h in crate::trees::hashes_from_snapshot(count, nodes)? {
                partial.push_leaf_hash(h);
            }
            t.frontier.push(partial);
            level += 1;
        }
        if let Some(tail) = &mut t.entries {
            *tail = crate::trees::hashes_from_snapshot(size % WIDTH, nodes)?;
        }
        Ok(t)
    }
}

impl Subtrees for TiledTree {
    fn leaves(&self) -> u64 {
        self.size
    }

    fn complete(&self, level: u32, index: u64) -> Result<Hash, ProofError> {
        let out = || {
            ProofError::OutOfRange(format!(
                "no complete subtree at level {level}, index {index}"
            ))
        };
        let end = index
            .checked_add(1)
            .and_then(|e| e.checked_mul(1u64.checked_shl(level)?))
            .ok_or_else(out)?;
        if end > self.size {
            return Err(out());
        }
        let (tl, j) = (level / 8, level % 8);
        // The node's first descendant on tree level 8·tl, its tile, and
        // the node's place inside the tile.
        let first = index << j;
        let (n, at) = (first / WIDTH, (first % WIDTH) >> j);
        let full = (self.size >> (8 * tl)) / WIDTH;
        if n >= full {
            return self
                .frontier
                .get(tl as usize)
                .and_then(|t| t.node(j, at))
                .ok_or_else(out);
        }
        match &*self.full_tile(tl, n)? {
            Cached::Hashes(t) => t.node(j, at).ok_or_else(out),
            Cached::Entries(_) => Err(out()),
        }
    }
}

impl keyledger_audit::tiles::Nodes for TiledTree {
    fn size(&self) -> u64 {
        self.size
    }

    fn node(&self, level: u32, index: u64) -> Option<Hash> {
        self.complete(level, index).ok()
    }

    fn entry(&self, index: u64) -> Option<Vec<u8>> {
        self.entry(index).ok().flatten().map(|e| e.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: u64) -> Hash {
        merkle::leaf_hash(&i.to_be_bytes())
    }

    /// Every root, proof and node of a tiled tree is the in-memory tree's,
    /// across tile boundaries, after a flush and read back through a
    /// snapshot of its frontier.
    #[test]
    fn a_tiled_tree_answers_as_the_tree_in_memory() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(NodeStore::open(dir.path()));
        let mut tiled = TiledTree::new(store.clone(), Arc::from("x"), true);
        let mut tree = Tree::new();
        let n = 70_000u64;
        for i in 0..n {
            // The entry is a chain hash, the leaf its hash (as the global
            // tree's).
            let e = leaf(i);
            tiled.push(merkle::leaf_hash(&e), Some(&e));
            tree.push(&e);
        }
        store.sync(n).unwrap_or_else(|e| panic!("{e}"));
        let mut nodes = Vec::new();
        tiled.to_snapshot(&mut nodes);
        // 70,000 = 273·256 + 112; 273 = 1·256 + 17; 1: three levels.
        assert_eq!(nodes.len() / 32, 112 + 17 + 1 + 112);
        let check = |t: &TiledTree| {
            for size in [1, 2, 255, 256, 257, 65_535, 65_536, 65_537, n - 1, n] {
                assert_eq!(t.root(size), tree.root(size), "{size}");
                for index in [0, 1, 255, 256, 40_000, size - 1] {
                    if index < size {
                        assert_eq!(
                            t.inclusion_proof(index, size),
                            tree.inclusion_proof(index, size)
                        );
                    }
                }
                assert_eq!(
                    t.consistency_proof(size / 3, size),
                    tree.consistency_proof(size / 3, size)
                );
                assert_eq!(
                    t.range_proof(size / 2, size, size),
                    tree.range_proof(size / 2, size, size)
                );
            }
            assert_eq!(t.leaf(65_600).ok().flatten(), tree.leaf(65_600));
            assert_eq!(t.entry(600).ok().flatten(), Some(leaf(600)));
            assert_eq!(t.entry(n - 1).ok().flatten(), Some(leaf(n - 1)));
            assert!(!t.nodes_damaged());
            assert!(t.root(n + 1).is_err());
        };
        check(&tiled);
        // Read back after a restart: the file, and the frontier.
        drop((tiled, store));
        let reopened = Arc::new(NodeStore::open(dir.path()));
        assert_eq!(reopened.synced(), n);
        let back = TiledTree::from_snapshot(
            reopened,
            Arc::from("x"),
            true,
            n,
            &mut nodes.chunks_exact(32),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut again = Vec::new();
        back.to_snapshot(&mut again);
        assert_eq!(again, nodes);
        check(&back);
    }

    /// A damaged tile is refused (never a wrong proof, never a smaller
    /// valid tree), and marks the store so the next open rebuilds it.
    #[test]
    fn a_damaged_tile_is_refused_and_the_store_rebuilt_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(NodeStore::open(dir.path()));
        let mut tiled = TiledTree::new(store.clone(), Arc::from("x"), false);
        let mut tree = Tree::new();
        for i in 0..1000u64 {
            tiled.push(leaf(i), None);
            tree.push(&i.to_be_bytes());
        }
        store.sync(1000).unwrap_or_else(|e| panic!("{e}"));
        let mut nodes = Vec::new();
        tiled.to_snapshot(&mut nodes);
        // Tile 0/1 damaged (one hash changed), and tile 0/2 lost.
        let mut bad = store
            .read("x", 0, 1)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("tile 0/1 stored"));
        bad[40] ^= 1;
        store
            .write(&[(Arc::from("x"), 0, 1, bad)], true, None)
            .unwrap_or_else(|e| panic!("{e}"));
        {
            let txn = store.db.begin_write().unwrap_or_else(|e| panic!("{e}"));
            {
                let mut t = txn.open_table(TILES).unwrap_or_else(|e| panic!("{e}"));
                t.remove(("x", 0, 2)).unwrap_or_else(|e| panic!("{e}"));
            }
            txn.commit().unwrap_or_else(|e| panic!("{e}"));
        }
        drop(tiled);
        drop(store);
        let store = Arc::new(NodeStore::open(dir.path()));
        let back = TiledTree::from_snapshot(
            store.clone(),
            Arc::from("x"),
            false,
            1000,
            &mut nodes.chunks_exact(32),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // What needs no damaged tile is answered, and right.
        assert_eq!(back.root(1000), tree.root(1000));
        assert_eq!(
            back.inclusion_proof(10, 1000),
            tree.inclusion_proof(10, 1000)
        );
        // What needs one is refused: no proof, no root of a prefix.
        for (index, size) in [(300, 1000), (600, 1000), (10, 300), (10, 700)] {
            assert!(
                matches!(
                    back.inclusion_proof(index, size),
                    Err(ProofError::Unavailable(_))
                ),
                "{index} in {size}"
            );
        }
        assert!(matches!(back.root(300), Err(ProofError::Unavailable(_))));
        assert!(matches!(
            back.consistency_proof(700, 1000),
            Err(ProofError::Unavailable(_))
        ));
        assert!(store.is_damaged());
        drop(back);
        drop(store);
        // The next open starts it anew: nothing covered, so no snapshot
        // is used and the replay writes every tile again.
        let again = NodeStore::open(dir.path());
        assert_eq!(again.synced(), 0);
        assert!(matches!(again.read("x", 0, 0), Ok(None)));
    }
}
