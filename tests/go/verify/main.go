// Command verify checks a running keyledger server's transparency evidence
// with Go's own golang.org/x/mod/sumdb/note and sumdb/tlog, independently of
// keyledger's Rust code (tests/transparency.rs runs it; built offline from
// Debian's golang-go and golang-golang-x-mod-dev in GOPATH mode).
//
// It opens the tenant's and the global tree's checkpoints with the C2SP
// verifier keys from /v1/audit/public-key, fetches the global tree's C2SP
// tiles over HTTP (a tlog.TileReader mapping C2SP paths), checks that the
// tenant's last event is a leaf of the global tree (the served proof and one
// built from tiles), that the entry bundle holds its chain hash, the tenant
// tree's own inclusion and consistency proofs, and, given an older global
// checkpoint (-old), the consistency of the two global checkpoints. Then it
// alters each piece of evidence and requires every check to reject it.
//
//	verify -url http://127.0.0.1:8080 [-tenant T] [-old FILE] [-save FILE]
//
// The API key is read from KEYLEDGER_API_KEY (or the operator token, with
// -tenant); the operator token for tiles that are not public from
// KEYLEDGER_OPERATOR_TOKEN. Exit status 0: all
// checks passed and every alteration was rejected.
package main

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

var (
	base     = flag.String("url", "", "the server's base URL")
	oldFile  = flag.String("old", "", "an older global checkpoint note, to check consistency with")
	saveFile = flag.String("save", "", "write the global checkpoint note here")
	tenant   = flag.String("tenant", "", "the tenant, when KEYLEDGER_API_KEY holds the operator token")
	apiKey   = os.Getenv("KEYLEDGER_API_KEY")
	operator = os.Getenv("KEYLEDGER_OPERATOR_TOKEN")
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func ok(format string, args ...interface{}) {
	fmt.Printf("ok: "+format+"\n", args...)
}

func get(path, credential string) ([]byte, *http.Response, error) {
	req, err := http.NewRequest("GET", strings.TrimSuffix(*base, "/")+path, nil)
	if err != nil {
		return nil, nil, err
	}
	if credential != "" {
		req.Header.Set("Authorization", "Bearer "+credential)
	}
	if *tenant != "" && strings.HasPrefix(path, "/v1/") {
		req.Header.Set("Keyledger-Tenant", *tenant)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != 200 {
		return nil, resp, fmt.Errorf("GET %s: %s: %s", path, resp.Status, body)
	}
	return body, resp, nil
}

func getJSON(path string, v interface{}) {
	body, _, err := get(path, apiKey)
	if err != nil {
		fail("%v", err)
	}
	if err := json.Unmarshal(body, v); err != nil {
		fail("GET %s: %v", path, err)
	}
}

// checkpoint is a C2SP tlog-checkpoint body.
type checkpoint struct {
	origin string
	size   int64
	root   tlog.Hash
}

// open verifies a signed note with the verifier key and parses its
// checkpoint; the origin must be the key's name.
func open(msg []byte, v note.Verifier) (checkpoint, error) {
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		return checkpoint{}, err
	}
	lines := strings.SplitN(n.Text, "\n", 4)
	if len(lines) < 4 {
		return checkpoint{}, errors.New("not a checkpoint")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 {
		return checkpoint{}, fmt.Errorf("bad tree size %q", lines[1])
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		return checkpoint{}, fmt.Errorf("bad root hash %q", lines[2])
	}
	if lines[0] != v.Name() {
		return checkpoint{}, fmt.Errorf("origin %q is not the key's name %q", lines[0], v.Name())
	}
	var root tlog.Hash
	copy(root[:], raw)
	return checkpoint{origin: lines[0], size: size, root: root}, nil
}

func hash(s string) tlog.Hash {
	var h tlog.Hash
	raw, err := hex.DecodeString(s)
	if err != nil || len(raw) != tlog.HashSize {
		fail("not a hash: %q", s)
	}
	copy(h[:], raw)
	return h
}

func hashes(ss []string) []tlog.Hash {
	out := make([]tlog.Hash, len(ss))
	for i, s := range ss {
		out[i] = hash(s)
	}
	return out
}

// tilePath is the C2SP tlog-tiles path of a tile: tile/<L>/<N>[.p/<W>],
// or tile/entries/<N>[.p/<W>] for level -1 (Go's data tiles).
func tilePath(t tlog.Tile) string {
	n := strconv.FormatInt(t.N%1000, 10)
	n = strings.Repeat("0", 3-len(n)) + n
	for rest := t.N / 1000; rest > 0; rest /= 1000 {
		g := strconv.FormatInt(rest%1000, 10)
		n = "x" + strings.Repeat("0", 3-len(g)) + g + "/" + n
	}
	level := strconv.Itoa(t.L)
	if t.L == -1 {
		level = "entries"
	}
	p := "/log/tile/" + level + "/" + n
	if t.W < 1<<t.H {
		p += ".p/" + strconv.Itoa(t.W)
	}
	return p
}

// httpTiles reads tiles from the server; tamper, if set, may alter a
// tile's bytes (the negative checks).
type httpTiles struct {
	fetched int
	tamper  func(t tlog.Tile, data []byte)
}

func (r *httpTiles) Height() int { return 8 }

func (r *httpTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		body, resp, err := get(tilePath(t), operator)
		if err != nil {
			return nil, err
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/octet-stream" {
			return nil, fmt.Errorf("%s: Content-Type %q", tilePath(t), ct)
		}
		cc := resp.Header.Get("Cache-Control")
		full := t.W == 1<<t.H
		if full != strings.Contains(cc, "immutable") {
			return nil, fmt.Errorf("%s: Cache-Control %q", tilePath(t), cc)
		}
		if len(body) != t.W*tlog.HashSize {
			return nil, fmt.Errorf("%s: %d bytes", tilePath(t), len(body))
		}
		if r.tamper != nil {
			r.tamper(t, body)
		}
		out[i] = body
		r.fetched++
	}
	return out, nil
}

func (r *httpTiles) SaveTiles(tiles []tlog.Tile, data [][]byte) {}

// entry reads global leaf index's entry from its entry bundle in the tree
// of size.
func entry(index, size int64) []byte {
	t := tlog.Tile{H: 8, L: -1, N: index / 256, W: 256}
	if (t.N+1)*256 > size {
		t.W = int(size - t.N*256)
	}
	body, _, err := get(tilePath(t), operator)
	if err != nil {
		fail("%v", err)
	}
	for i := int64(0); ; i++ {
		if len(body) < 2 {
			fail("entry bundle %s ends before entry %d", tilePath(t), index)
		}
		n := int(binary.BigEndian.Uint16(body))
		if len(body) < 2+n {
			fail("entry bundle %s: a truncated entry", tilePath(t))
		}
		if t.N*256+i == index {
			return body[2 : 2+n]
		}
		body = body[2+n:]
	}
}

// mustReject fails unless err is an error.
func mustReject(what string, err error) {
	if err == nil {
		fail("an altered %s was accepted", what)
	}
	ok("an altered %s is rejected (%v)", what, err)
}

func main() {
	flag.Parse()
	if *base == "" || apiKey == "" {
		fail("usage: KEYLEDGER_API_KEY=… verify -url URL [-old FILE] [-save FILE]")
	}

	// The verifier keys, as the API hands them out.
	var pk struct {
		VerifierKey       string `json:"verifier_key"`
		GlobalVerifierKey string `json:"global_verifier_key"`
	}
	getJSON("/v1/audit/public-key", &pk)
	tenantV, err := note.NewVerifier(pk.VerifierKey)
	if err != nil {
		fail("note.NewVerifier(%q): %v", pk.VerifierKey, err)
	}
	globalV, err := note.NewVerifier(pk.GlobalVerifierKey)
	if err != nil {
		fail("note.NewVerifier(%q): %v", pk.GlobalVerifierKey, err)
	}
	ok("note.NewVerifier accepts %s and %s", pk.VerifierKey, pk.GlobalVerifierKey)

	// The tenant's checkpoint, with its place in a global checkpoint.
	var cp struct {
		Note   string `json:"note"`
		Global struct {
			Note  string   `json:"note"`
			Index int64    `json:"index"`
			Leaf  string   `json:"leaf"`
			Proof []string `json:"proof"`
		} `json:"global"`
	}
	getJSON("/v1/audit/checkpoint", &cp)
	if cp.Global.Note == "" {
		fail("the tenant checkpoint comes without its global inclusion (an API key sees it only with --tiles-public)")
	}
	tenant, err := open([]byte(cp.Note), tenantV)
	if err != nil {
		fail("the tenant checkpoint: %v", err)
	}
	ok("tenant checkpoint %s, %d events", tenant.origin, tenant.size)
	if tenant.size < 2 {
		fail("the tenant needs two events or more")
	}
	global, err := open([]byte(cp.Global.Note), globalV)
	if err != nil {
		fail("the global checkpoint: %v", err)
	}
	ok("global checkpoint %s, %d events", global.origin, global.size)

	// The tenant tree's last leaf, by the tenant's own inclusion proof.
	var inc struct {
		Leaf  string   `json:"leaf"`
		Proof []string `json:"proof"`
		Root  string   `json:"root"`
	}
	getJSON(fmt.Sprintf("/v1/audit/proof/inclusion?position=%d&size=%d", tenant.size, tenant.size), &inc)
	leaf := hash(inc.Leaf)
	if err := tlog.CheckRecord(hashes(inc.Proof), tenant.size, tenant.root, tenant.size-1, leaf); err != nil {
		fail("the tenant inclusion proof: %v", err)
	}
	ok("tlog.CheckRecord: the tenant's last event is leaf %d of its checkpoint", tenant.size-1)
	var cons struct {
		FromRoot string   `json:"from_root"`
		Proof    []string `json:"proof"`
	}
	getJSON(fmt.Sprintf("/v1/audit/proof/consistency?from=1&to=%d", tenant.size), &cons)
	if err := tlog.CheckTree(hashes(cons.Proof), tenant.size, tenant.root, 1, hash(cons.FromRoot)); err != nil {
		fail("the tenant consistency proof: %v", err)
	}
	ok("tlog.CheckTree: the tenant tree of 1 event is a prefix of its checkpoint")

	// ... is a leaf of the global tree: by the served proof.
	if hash(cp.Global.Leaf) != leaf {
		fail("the global leaf %s is not the tenant's last leaf %s", cp.Global.Leaf, inc.Leaf)
	}
	served := hashes(cp.Global.Proof)
	if err := tlog.CheckRecord(served, global.size, global.root, cp.Global.Index, leaf); err != nil {
		fail("the served global inclusion proof: %v", err)
	}
	ok("tlog.CheckRecord: the tenant checkpoint's head is global leaf %d (served proof)", cp.Global.Index)

	// ... and by a proof built from tiles fetched over HTTP.
	tiles := &httpTiles{}
	hr := tlog.TileHashReader(tlog.Tree{N: global.size, Hash: global.root}, tiles)
	proof, err := tlog.ProveRecord(global.size, cp.Global.Index, hr)
	if err != nil {
		fail("tlog.ProveRecord from tiles: %v", err)
	}
	if err := tlog.CheckRecord(proof, global.size, global.root, cp.Global.Index, leaf); err != nil {
		fail("the inclusion proof built from tiles: %v", err)
	}
	ok("tlog.ProveRecord/CheckRecord over %d tiles: the same leaf", tiles.fetched)
	e := entry(cp.Global.Index, global.size)
	if len(e) != 32 || tlog.RecordHash(e) != leaf {
		fail("entry %d of the bundle does not hash to the leaf", cp.Global.Index)
	}
	ok("the entry bundle holds a 32-byte entry hashing to that leaf")

	// The newest global checkpoint, as /log/checkpoint serves it.
	body, resp, err := get("/log/checkpoint", operator)
	if err != nil {
		fail("%v", err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		fail("/log/checkpoint: Content-Type %q", ct)
	}
	latest, err := open(body, globalV)
	if err != nil {
		fail("/log/checkpoint: %v", err)
	}
	if latest.size < global.size {
		fail("/log/checkpoint (%d) is older than the tenant's global checkpoint (%d)", latest.size, global.size)
	}
	latestHR := tlog.TileHashReader(tlog.Tree{N: latest.size, Hash: latest.root}, &httpTiles{})
	checkConsistent := func(old checkpoint) {
		p, err := tlog.ProveTree(latest.size, old.size, latestHR)
		if err != nil {
			fail("tlog.ProveTree %d -> %d: %v", old.size, latest.size, err)
		}
		if err := tlog.CheckTree(p, latest.size, latest.root, old.size, old.root); err != nil {
			fail("global checkpoints of %d and %d events are not consistent: %v", old.size, latest.size, err)
		}
		ok("tlog.ProveTree/CheckTree: global %d -> %d consistent", old.size, latest.size)
	}
	checkConsistent(global)
	if *oldFile != "" {
		raw, err := os.ReadFile(*oldFile)
		if err != nil {
			fail("%v", err)
		}
		old, err := open(raw, globalV)
		if err != nil {
			fail("the older global checkpoint: %v", err)
		}
		if old.size >= latest.size {
			fail("the older global checkpoint (%d) is not older than %d", old.size, latest.size)
		}
		checkConsistent(old)
	}
	if *saveFile != "" {
		if err := os.WriteFile(*saveFile, body, 0o644); err != nil {
			fail("%v", err)
		}
	}

	// Every alteration is rejected.
	alter := func(s string) []byte {
		// A different tree size on the second line.
		lines := strings.SplitN(s, "\n", 3)
		n, _ := strconv.ParseInt(lines[1], 10, 64)
		return []byte(lines[0] + "\n" + strconv.FormatInt(n+1, 10) + "\n" + lines[2])
	}
	_, err = open(alter(cp.Note), tenantV)
	mustReject("tenant checkpoint", err)
	_, err = open(alter(string(body)), globalV)
	mustReject("global checkpoint", err)
	_, err = open([]byte(cp.Note), globalV)
	mustReject("checkpoint of another log (the tenant's, opened as the global one)", err)
	bad := append([]tlog.Hash(nil), served...)
	if len(bad) == 0 {
		fail("the global proof is empty: too few events to alter it")
	}
	bad[0][0] ^= 1
	mustReject("served global inclusion proof", tlog.CheckRecord(bad, global.size, global.root, cp.Global.Index, leaf))
	for _, level := range []int{0, 1} {
		if level == 1 && global.size < 256 {
			continue
		}
		tampered := &httpTiles{tamper: func(t tlog.Tile, data []byte) {
			if t.L == level {
				data[len(data)-1] ^= 1
			}
		}}
		thr := tlog.TileHashReader(tlog.Tree{N: global.size, Hash: global.root}, tampered)
		_, err := tlog.ProveRecord(global.size, cp.Global.Index, thr)
		mustReject(fmt.Sprintf("level-%d tile", level), err)
	}
	altered := append([]byte(nil), e...)
	altered[0] ^= 1
	if tlog.RecordHash(altered) == leaf {
		fail("an altered entry was accepted")
	}
	ok("an altered entry is rejected (its hash is not the leaf)")
	fmt.Println("VERIFIED")
}
