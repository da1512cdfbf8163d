package ds_test

import (
	"database/sql"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/mls"
)

// Benchmarks of a transparent group's handshake path through ds.Service on
// a durable SQLite file, at 100 to 50,000 members: accepting an Add Commit
// (SendCommitBundle with a Welcome) and an empty Commit with an UpdatePath
// (Send), storage included, and the tree queries.
//
// The groups are synthetic but valid (the checks of
// mls.NewPublicGroupState pass): every member has its own signature key
// and leaf signature, every parent node above two non-empty subtrees
// holds a key, and parent hashes chain as if each parent had last been
// set by a Commit from its leftmost descendant. They are built the way
// such a tree comes about: an UpdatePath merged from every even leaf,
// right to left. Encryption keys are random 32-byte strings (any string
// is an X25519 public key); the Delivery Service never encrypts to them.
//
// Each benchmark reports, besides ns/op, the bytes the store holds for the
// group: state-B (the snapshot and the state log, or the state blob of the
// schema before the log) and db-B (the database file after a checkpoint,
// memberships and all).

var benchSizes = []int{100, 1000, 10000, 50000}

// bigGroup is a transparent group on a Service, and the test's mirror of
// its public state.
type bigGroup struct {
	svc   *ds.Service
	store *sqlite.Store
	path  string
	id    []byte
	st    *mls.PublicGroupState
	keys  map[mls.LeafIndex]*member
	clock *clock
	next  int // counter for new members
}

// benchGroups builds the groups of one top-level benchmark, each once,
// in the benchmark's temporary directory.
type benchGroups struct {
	top *testing.B
	mu  sync.Mutex
	m   map[int]*bigGroup
}

func newBenchGroups(b *testing.B) *benchGroups {
	gs := &benchGroups{top: b, m: map[int]*bigGroup{}}
	b.Cleanup(func() {
		for _, g := range gs.m {
			g.store.Close()
		}
	})
	return gs
}

// get returns the group of n members, building it on first use.
func (gs *benchGroups) get(b *testing.B, n int) *bigGroup {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	if g, ok := gs.m[n]; ok {
		return g
	}
	g := newBigGroup(b, filepath.Join(gs.top.TempDir(), fmt.Sprintf("ds-%d.db", n)), n)
	gs.m[n] = g
	return g
}

// newBigGroup builds a synthetic group of n members and creates it on a
// new Service over the database at path.
func newBigGroup(tb testing.TB, path string, n int) *bigGroup {
	tb.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	g := &bigGroup{path: path, id: []byte(fmt.Sprintf("big group %d", n)), keys: map[mls.LeafIndex]*member{}, clock: &clock{t: now}}

	nodes := make([]*mls.Node, 2*n-1)
	for i := 0; i < n; i++ {
		priv, pub, err := suite.GenerateSignatureKeyPair()
		if err != nil {
			tb.Fatal(err)
		}
		m := &member{id: fmt.Sprintf("m%05d", i), sigPriv: priv, sigPub: pub}
		g.keys[mls.LeafIndex(i)] = m
		// Even leaves are replaced by the UpdatePaths below.
		leaf := m.kpLeafTB(tb, now.Add(-time.Hour), now.Add(24*time.Hour))
		nodes[2*i] = &mls.Node{Leaf: &leaf}
	}
	tree, err := mls.NewRatchetTree(suite, nodes)
	if err != nil {
		tb.Fatal(err)
	}
	for i := (n - 1) &^ 1; i >= 0; i -= 2 {
		l := mls.LeafIndex(i)
		path := g.updatePath(tb, tree, l)
		if len(path.Nodes) == 0 {
			continue
		}
		if err := tree.MergeUpdatePath(l, path); err != nil {
			tb.Fatalf("building the tree, leaf %d: %v", i, err)
		}
	}
	gi := &mls.GroupInfo{
		GroupContext: mls.GroupContext{
			Version: mls.ProtocolVersionMLS10, CipherSuite: suite, GroupID: g.id, Epoch: 0,
			TreeHash: tree.TreeHash(), ConfirmedTranscriptHash: []byte{},
		},
		ConfirmationTag: random(suite.HashSize()),
		Signer:          0,
	}
	if err := gi.Sign(g.keys[0].sigPriv); err != nil {
		tb.Fatal(err)
	}
	if g.st, err = mls.NewPublicGroupState(gi, tree); err != nil {
		tb.Fatalf("synthetic group is invalid: %v", err)
	}
	giMsg := must((&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}).MarshalBinary())
	treeBytes := must(tree.MarshalBinary())

	g.open(tb)
	// Every member is a registered client (the Service binds leaves to
	// them, RFC 9750 §5). The synthetic group goes straight to the store:
	// its leaves came in through no published KeyPackages.
	var ids []string
	for i := 0; i < n; i++ {
		m := g.keys[mls.LeafIndex(i)]
		if err := g.store.CreateClient(bg, ds.Client{ID: m.id, CipherSuite: suite, SignatureKey: m.sigPub, CreatedAt: now}); err != nil {
			tb.Fatal(err)
		}
		ids = append(ids, m.id)
	}
	_ = treeBytes
	rec := ds.GroupRecord{ID: g.id, Mode: ds.ModeTransparent, CipherSuite: suite, Creator: g.keys[0].id, CreatedAt: now,
		State: must(g.st.MarshalBinary()), GroupInfo: giMsg}
	if err := g.store.CreateGroup(bg, rec, ids); err != nil {
		tb.Fatal(err)
	}
	return g
}

// open opens the store and a Service on it.
func (g *bigGroup) open(tb testing.TB) {
	s, err := sqlite.Open(bg, g.path, sqlite.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	g.store = s
	g.svc = ds.New(s, ds.Config{
		MaxMessageSize:    64 << 20, // the initial tree of a synthetic group; real groups grow by Commits
		MaxGroupSize:      1 << 20,  // the Add benchmark goes beyond 50,000
		RequestsPerSecond: -1, ClaimsPerMinute: -1, ClaimsPerTargetPerMinute: -1,
		Now: g.clock.Now,
	})
}

// kpLeafTB is kpLeaf for any testing.TB, with a random encryption key.
func (m *member) kpLeafTB(tb testing.TB, nb, na time.Time) mls.LeafNode {
	leaf := mls.LeafNode{
		EncryptionKey:  random(32),
		SignatureKey:   m.sigPub,
		Credential:     mls.Credential{CredentialType: mls.CredentialTypeBasic, Identity: []byte(m.id)},
		Capabilities:   capabilities(),
		LeafNodeSource: mls.LeafNodeSourceKeyPackage,
		Lifetime:       &mls.Lifetime{NotBefore: uint64(nb.Unix()), NotAfter: uint64(na.Unix())},
	}
	if err := leaf.Sign(suite, m.sigPriv, nil, 0); err != nil {
		tb.Fatal(err)
	}
	return leaf
}

// updatePath builds a valid UpdatePath for the member at leaf l of tree
// (as it is, with no proposals applied), with random keys and
// ciphertexts.
func (g *bigGroup) updatePath(tb testing.TB, tree *mls.RatchetTree, l mls.LeafIndex) *mls.UpdatePath {
	return buildUpdatePath(tb, tree, g.id, g.keys[l], l)
}

// buildUpdatePath builds a valid UpdatePath for member m at leaf l of tree
// (as it is, with no proposals applied), with random keys and
// ciphertexts.
func buildUpdatePath(tb testing.TB, tree *mls.RatchetTree, groupID []byte, m *member, l mls.LeafIndex) *mls.UpdatePath {
	path := &mls.UpdatePath{LeafNode: mls.LeafNode{
		EncryptionKey:  random(32),
		SignatureKey:   m.sigPub,
		Credential:     mls.Credential{CredentialType: mls.CredentialTypeBasic, Identity: []byte(m.id)},
		Capabilities:   capabilities(),
		LeafNodeSource: mls.LeafNodeSourceCommit,
	}}
	for _, c := range tree.Copath(l) {
		res := tree.Resolution(c)
		if len(res) == 0 {
			continue
		}
		n := mls.UpdatePathNode{EncryptionKey: random(32)}
		for range res {
			n.EncryptedPathSecret = append(n.EncryptedPathSecret, mls.HPKECiphertext{KEMOutput: random(32), Ciphertext: random(48)})
		}
		path.Nodes = append(path.Nodes, n)
	}
	ph, err := tree.PathParentHash(l, path)
	if err != nil {
		tb.Fatal(err)
	}
	path.LeafNode.ParentHash = ph
	if err := path.LeafNode.Sign(suite, m.sigPriv, groupID, l); err != nil {
		tb.Fatal(err)
	}
	return path
}

// frame signs a Commit by the member at leaf for the mirror's epoch.
func (g *bigGroup) frame(tb testing.TB, leaf mls.LeafIndex, c *mls.Commit) (*mls.PublicMessage, []byte) {
	gc := g.st.GroupContext()
	ac := &mls.AuthenticatedContent{WireFormat: mls.WireFormatPublicMessage, Content: mls.FramedContent{
		GroupID: g.id, Epoch: gc.Epoch, Sender: mls.Sender{SenderType: mls.SenderTypeMember, LeafIndex: leaf},
		ContentType: mls.ContentTypeCommit, Commit: c,
	}}
	ac.Auth.ConfirmationTag = random(suite.HashSize())
	if err := ac.Sign(suite, g.keys[leaf].sigPriv, &gc); err != nil {
		tb.Fatal(err)
	}
	pm := must(mls.ProtectPublic(ac, random(suite.HashSize()), &gc))
	return pm, must((&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm}).MarshalBinary())
}

// apply moves the mirror to the state after pm.
func (g *bigGroup) apply(tb testing.TB, pm *mls.PublicMessage) *mls.CommitEffect {
	next, eff, err := g.st.HandleCommit(pm)
	if err != nil {
		tb.Fatalf("benchmark Commit is invalid: %v", err)
	}
	leaf := pm.Content.Sender.LeafIndex
	data := must((&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm}).MarshalBinary())
	commitGroupInfos.Store(string(data), commitGroupInfo(tb, next, pm, g.keys[leaf], leaf))
	g.st = next
	return eff
}

// addCommit builds a Commit by leaf 0 that adds a new member, and its
// bundle with a Welcome, and moves the mirror on.
func (g *bigGroup) addCommit(tb testing.TB) ds.CommitBundle {
	g.next++
	priv, pub, err := suite.GenerateSignatureKeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	m := &member{id: fmt.Sprintf("new%06d", g.next), sigPriv: priv, sigPub: pub}
	now := g.clock.Now()
	kp := &mls.KeyPackage{Version: mls.ProtocolVersionMLS10, CipherSuite: suite, InitKey: random(32),
		LeafNode: m.kpLeafTB(tb, now.Add(-time.Hour), now.Add(24*time.Hour))}
	if err := kp.Sign(m.sigPriv); err != nil {
		tb.Fatal(err)
	}
	// The new member is registered and published the KeyPackage: its
	// consent (RFC 9750 §5).
	if err := g.store.CreateClient(bg, ds.Client{ID: m.id, CipherSuite: suite, SignatureKey: m.sigPub, CreatedAt: now}); err != nil {
		tb.Fatal(err)
	}
	kpMsg := must((&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp}).MarshalBinary())
	if err := g.store.AddKeyPackages(bg, []ds.KeyPackageRecord{{Ref: must(kp.Ref()), ClientID: m.id, CipherSuite: suite, Data: kpMsg,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), UploadedAt: now}}, 1000); err != nil {
		tb.Fatal(err)
	}
	pm, data := g.frame(tb, 0, &mls.Commit{Proposals: []mls.ProposalOrRef{addOf(kp)}})
	eff := g.apply(tb, pm)
	g.keys[eff.Added[0].Leaf] = m
	w := &mls.Welcome{CipherSuite: suite, EncryptedGroupInfo: random(64), Secrets: []mls.EncryptedGroupSecrets{{
		NewMember: must(kp.Ref()), EncryptedGroupSecrets: mls.HPKECiphertext{KEMOutput: random(32), Ciphertext: random(48)},
	}}}
	wb := must((&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatWelcome, Welcome: w}).MarshalBinary())
	gi, _ := commitGroupInfos.Load(string(data))
	return ds.CommitBundle{Commit: data, Welcome: wb, GroupInfo: gi.([]byte)}
}

// pathCommit builds an empty Commit with an UpdatePath by the member at
// leaf l, and moves the mirror on.
func (g *bigGroup) pathCommit(tb testing.TB, l mls.LeafIndex) (string, []byte) {
	path := g.updatePath(tb, g.st.Tree(), l)
	pm, data := g.frame(tb, l, &mls.Commit{Path: path})
	g.apply(tb, pm)
	return g.keys[l].id, data
}

// committer picks a member leaf for the i-th path Commit, spread over the
// tree.
func (g *bigGroup) committer(i int) mls.LeafIndex {
	tree := g.st.Tree()
	n := int(tree.LeafCount())
	for k := 0; ; k++ {
		l := mls.LeafIndex((i*7919 + k) % n)
		if tree.Leaf(l) != nil {
			return l
		}
	}
}

// reportStorage reports the bytes the store holds for the group.
func (g *bigGroup) reportStorage(b *testing.B) {
	db, err := sql.Open("sqlite", "file:"+g.path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	var state int64
	if err := db.QueryRow(`SELECT
		(SELECT COALESCE(SUM(length(state)), 0) FROM group_snapshots) +
		(SELECT COALESCE(SUM(length(data)), 0) FROM messages WHERE state_version IS NOT NULL)`).Scan(&state); err != nil {
		// The schema before the state log: the whole state in the group row.
		if err := db.QueryRow("SELECT COALESCE(SUM(length(state)), 0) FROM groups").Scan(&state); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := db.Exec("PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		b.Logf("checkpoint: %v", err)
	}
	var pages, size int64
	db.QueryRow("PRAGMA page_count").Scan(&pages)
	db.QueryRow("PRAGMA page_size").Scan(&size)
	b.ReportMetric(float64(state), "state-B")
	b.ReportMetric(float64(pages*size), "db-B")
}

// BenchmarkAcceptAddCommit: SendCommitBundle of a Commit that adds one
// member (no path) with its Welcome.
func BenchmarkAcceptAddCommit(b *testing.B) {
	gs := newBenchGroups(b)
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			g := gs.get(b, n)
			bundles := make([]ds.CommitBundle, b.N)
			for i := range bundles {
				bundles[i] = g.addCommit(b)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range bundles {
				if _, err := sendBundle(g.svc, "m00000", bundles[i]); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			g.reportStorage(b)
		})
	}
}

// BenchmarkAcceptUpdatePathCommit: Send of an empty Commit with an
// UpdatePath, from members spread over the tree.
func BenchmarkAcceptUpdatePathCommit(b *testing.B) {
	gs := newBenchGroups(b)
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			g := gs.get(b, n)
			type commit struct {
				sender string
				data   []byte
			}
			commits := make([]commit, b.N)
			for i := range commits {
				l := g.committer(g.next)
				g.next++
				commits[i].sender, commits[i].data = g.pathCommit(b, l)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for _, c := range commits {
				if _, err := sendMsg(g.svc, c.sender, c.data); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			g.reportStorage(b)
		})
	}
}

// BenchmarkTreeQueries: the tree queries of a member, on a group whose
// state is cached (the usual case), and one on a cold cache.
func BenchmarkTreeQueries(b *testing.B) {
	gs := newBenchGroups(b)
	for _, n := range benchSizes {
		g := gs.get(b, n)
		member := g.keys[0].id
		b.Run(fmt.Sprintf("GetPath/members=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := g.svc.TreePath(bg, member, g.id, g.committer(i)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("GetRoster1/members=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := g.svc.TreeRoster(bg, member, g.id, g.committer(i)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("GetRosterAll/members=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := g.svc.TreeRoster(bg, member, g.id); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("GetRatchetTree/members=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := g.svc.RatchetTree(bg, member, g.id); err != nil {
					b.Fatal(err)
				}
			}
		})
		// What a cache miss costs (a restart, an eviction, a Service
		// without cache): decoding the latest snapshot and indexing the
		// clients, measured through GetPath on a Service without cache.
		cold := ds.New(g.store, ds.Config{StateCacheBytes: -1, RequestsPerSecond: -1, Now: g.clock.Now})
		b.Run(fmt.Sprintf("ColdGetPath/members=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := cold.TreePath(bg, member, g.id, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
