package main

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/mlsds/mlsds/mls"
)

const testSuite = mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519

// member is one client of a test group.
type member struct {
	name string
	kp   *mls.KeyPackage
	priv *mls.KeyPackagePrivate
	g    *mls.Group
}

func newMember(t *testing.T, name string) *member {
	t.Helper()
	kp, priv, err := mls.NewKeyPackage(testSuite, []byte(name), nil, 0, 1<<62)
	if err != nil {
		t.Fatal(err)
	}
	return &member{name: name, kp: kp, priv: priv}
}

func (m *member) join(t *testing.T, w *mls.Welcome) {
	t.Helper()
	g, err := mls.JoinGroup(w, m.kp, m.priv, nil, nil)
	if err != nil {
		t.Fatalf("%s joins: %v", m.name, err)
	}
	m.g = g
}

// commit has m commit adds and removes, merges it, and has each of
// followers process it.
func (m *member) commit(t *testing.T, adds []*member, removes []mls.LeafIndex, followers ...*member) (*mls.PublicMessage, *mls.Welcome) {
	t.Helper()
	var kps []*mls.KeyPackage
	for _, a := range adds {
		kps = append(kps, a.kp)
	}
	pm, w, err := m.g.Commit(kps, removes)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	for _, f := range followers {
		if _, err := f.g.HandleCommit(pm); err != nil {
			t.Fatalf("%s processes %s's Commit: %v", f.name, m.name, err)
		}
	}
	return pm, w
}

func encodeMessage(t *testing.T, m *mls.MLSMessage) []byte {
	t.Helper()
	m.Version = mls.ProtocolVersionMLS10
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fixture holds real MLS objects of a group of three.
type fixture struct {
	kp, kpBare       []byte // alice's KeyPackage, as MLSMessage and bare
	gi, giBare       []byte // GroupInfo of epoch 1 with a 3-member ratchet tree
	gi0              []byte // GroupInfo of epoch 0 (alice alone), with its tree
	welcome          []byte
	commit           []byte // PublicMessage Commit of epoch 0 adding bob and carol
	private          []byte // PrivateMessage of epoch 1
	tree             []byte // the ratchet tree of epoch 1, bare
	groupID          []byte
	bobRef, carolRef []byte
}

var (
	fixtureOnce sync.Once
	theFixture  *fixture
)

func getFixture(t *testing.T) *fixture {
	fixtureOnce.Do(func() { theFixture = makeFixture(t) })
	if theFixture == nil {
		t.Fatal("making the fixture failed")
	}
	return theFixture
}

func makeFixture(t *testing.T) *fixture {
	f := &fixture{groupID: []byte("inspect test group")}
	alice, bob, carol := newMember(t, "alice"), newMember(t, "bob"), newMember(t, "carol")
	f.kp = encodeMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: alice.kp})
	f.kpBare, _ = alice.kp.MarshalBinary()
	f.bobRef, _ = bob.kp.Ref()
	f.carolRef, _ = carol.kp.Ref()
	var err error
	if alice.g, err = mls.NewGroup(f.groupID, alice.kp, alice.priv); err != nil {
		t.Fatal(err)
	}
	gi0, err := alice.g.GroupInfo(true)
	if err != nil {
		t.Fatal(err)
	}
	f.gi0 = encodeMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi0})
	pm, w := alice.commit(t, []*member{bob, carol}, nil)
	f.commit = encodeMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm})
	f.welcome = encodeMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: w})
	gi, err := alice.g.GroupInfo(true)
	if err != nil {
		t.Fatal(err)
	}
	f.gi = encodeMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
	f.giBare, _ = gi.MarshalBinary()
	priv, err := alice.g.Seal([]byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	f.private = encodeMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: priv})
	if f.tree, err = alice.g.Tree().MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	return f
}

// inspectJSON is the --json output, as far as the tests read it.
type inspectJSON struct {
	Encoding string          `json:"encoding"`
	Type     string          `json:"type"`
	Object   json.RawMessage `json:"object"`
	Tree     *treeReport     `json:"tree"`
	Checks   []check         `json:"checks"`
}

func runInspectCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(append([]string{"inspect"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// forms writes data raw, in hex and in base64 (wrapped, as base64(1) does)
// and returns the files.
func forms(t *testing.T, data []byte) map[string]string {
	dir := t.TempDir()
	b64 := base64.StdEncoding.EncodeToString(data)
	var wrapped strings.Builder
	for len(b64) > 76 {
		wrapped.WriteString(b64[:76] + "\n")
		b64 = b64[76:]
	}
	wrapped.WriteString(b64 + "\n")
	out := map[string]string{}
	for name, content := range map[string][]byte{
		"raw":    data,
		"hex":    []byte(hex.EncodeToString(data) + "\n"),
		"base64": []byte(wrapped.String()),
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		out[name] = p
	}
	return out
}

func checkStatus(checks []check, prefix string) []string {
	var out []string
	for _, c := range checks {
		if strings.HasPrefix(c.Name, prefix) {
			out = append(out, c.Status)
		}
	}
	return out
}

func TestInspectObjects(t *testing.T) {
	f := getFixture(t)
	cases := []struct {
		name     string
		data     []byte
		args     []string
		typ      string
		text     []string // in the text output
		okChecks []string // prefixes of checks that must be there and ok
	}{
		{name: "KeyPackage", data: f.kp, typ: "MLSMessage", text: []string{"wire format: KeyPackage", "identity: alice"},
			okChecks: []string{"KeyPackage signature", "leaf node signature", "KeyPackage valid"}},
		{name: "bare KeyPackage", data: f.kpBare, typ: "KeyPackage", text: []string{"identity: alice"},
			okChecks: []string{"KeyPackage signature", "leaf node signature", "KeyPackage valid"}},
		{name: "GroupInfo", data: f.gi, typ: "MLSMessage", text: []string{"wire format: GroupInfo", "epoch: 1", "leaf 0: alice (signer)", "leaf 1: bob", "leaf 2: carol"},
			okChecks: []string{"external_pub", "GroupInfo signature", "tree: tree hash", "tree: leaf signatures (3 leaves)", "tree: parent hashes", "tree: valid", "group state"}},
		{name: "bare GroupInfo", data: f.giBare, typ: "GroupInfo", text: []string{"3 members in 4 leaves"},
			okChecks: []string{"GroupInfo signature", "tree: parent hashes", "group state"}},
		{name: "Welcome", data: f.welcome, typ: "MLSMessage", text: []string{"wire format: Welcome", hex.EncodeToString(f.bobRef), hex.EncodeToString(f.carolRef)}},
		{name: "Commit", data: f.commit, typ: "MLSMessage", text: []string{"wire format: PublicMessage", "content type: commit", "sender: member, leaf 0", "type: add", "identity: bob", "identity: carol"},
			okChecks: []string{"UpdatePath leaf node signature", "proposal 0: KeyPackage signature", "proposal 1: KeyPackage valid"}},
		{name: "Commit with its epoch's GroupInfo", data: f.commit, args: []string{"--tree", "GI0"}, typ: "MLSMessage",
			okChecks: []string{"message signature"}},
		{name: "PrivateMessage", data: f.private, typ: "MLSMessage", text: []string{"wire format: PrivateMessage", "content type: application", "epoch: 1"}},
		{name: "ratchet tree", data: f.tree, args: []string{"--group-id", hex.EncodeToString(f.groupID)}, typ: "RatchetTree",
			text: []string{"leaf 2: carol"}, okChecks: []string{"tree: leaf signatures (3 leaves)", "tree: parent hashes", "tree: valid"}},
	}
	gi0 := filepath.Join(t.TempDir(), "gi0")
	os.WriteFile(gi0, f.gi0, 0o600)
	for _, tc := range cases {
		for form, path := range forms(t, tc.data) {
			t.Run(tc.name+"/"+form, func(t *testing.T) {
				var args []string
				for _, a := range tc.args {
					if a == "GI0" {
						a = gi0
					}
					args = append(args, a)
				}
				code, out, errb := runInspectCmd(t, append(args, path)...)
				if code != 0 {
					t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errb)
				}
				if !strings.HasPrefix(out, tc.typ+" (") || !strings.Contains(out, ", "+form+")") {
					t.Errorf("first line does not name the type %s and the form %s:\n%s", tc.typ, form, out)
				}
				for _, want := range tc.text {
					if !strings.Contains(out, want) {
						t.Errorf("no %q in:\n%s", want, out)
					}
				}
				code, js, errb := runInspectCmd(t, append(append(args, "--json"), path)...)
				if code != 0 {
					t.Fatalf("--json: exit %d: %s", code, errb)
				}
				var r inspectJSON
				if err := json.Unmarshal([]byte(js), &r); err != nil {
					t.Fatalf("--json output does not parse: %v\n%s", err, js)
				}
				if r.Type != tc.typ || r.Encoding != form || len(r.Object) == 0 {
					t.Errorf("--json: type %q encoding %q, want %q %q", r.Type, r.Encoding, tc.typ, form)
				}
				for _, c := range r.Checks {
					if c.Status == checkFailed {
						t.Errorf("check %q failed: %s", c.Name, c.Reason)
					}
				}
				for _, p := range tc.okChecks {
					st := checkStatus(r.Checks, p)
					if len(st) == 0 || slicesAll(st, checkOK) == false {
						t.Errorf("check %q: %v, want ok; all checks: %+v", p, st, r.Checks)
					}
				}
			})
		}
	}
}

func slicesAll(v []string, want string) bool {
	for _, s := range v {
		if s != want {
			return false
		}
	}
	return true
}

func TestInspectStdin(t *testing.T) {
	f := getFixture(t)
	p := filepath.Join(t.TempDir(), "in")
	os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(f.kp)), 0o600)
	in, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	old := os.Stdin
	os.Stdin = in
	defer func() { os.Stdin = old }()
	code, out, errb := runInspectCmd(t)
	if code != 0 || !strings.Contains(out, "KeyPackage") || !strings.Contains(out, "base64") {
		t.Fatalf("from standard input: exit %d\n%s\n%s", code, out, errb)
	}
}

func TestInspectTamperedSignatures(t *testing.T) {
	f := getFixture(t)
	for _, tc := range []struct {
		name, check string
		data        []byte
		tamper      func(m *mls.MLSMessage)
	}{
		{"KeyPackage", "KeyPackage signature", f.kp, func(m *mls.MLSMessage) { m.KeyPackage.Signature[3] ^= 0x40 }},
		{"GroupInfo", "GroupInfo signature", f.gi, func(m *mls.MLSMessage) { m.GroupInfo.Signature[3] ^= 0x40 }},
		{"leaf in a GroupInfo's tree", "tree: leaf signatures", f.gi, func(m *mls.MLSMessage) {
			gi := m.GroupInfo
			for i := range gi.Extensions {
				if gi.Extensions[i].ExtensionType != mls.ExtensionTypeRatchetTree {
					continue
				}
				var ext mls.RatchetTreeExtension
				if err := ext.UnmarshalBinary(gi.Extensions[i].ExtensionData); err != nil {
					t.Fatal(err)
				}
				ext.Nodes[2].Leaf.Signature[5] ^= 1 // bob's leaf
				gi.Extensions[i].ExtensionData, _ = ext.MarshalBinary()
			}
		}},
		{"UpdatePath leaf", "UpdatePath leaf node signature", f.commit, func(m *mls.MLSMessage) {
			m.PublicMessage.Content.Commit.Path.LeafNode.Signature[0] ^= 1
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := mls.ParseMLSMessage(tc.data)
			if err != nil {
				t.Fatal(err)
			}
			tc.tamper(m)
			p := filepath.Join(t.TempDir(), "obj")
			os.WriteFile(p, encodeMessage(t, m), 0o600)
			code, out, _ := runInspectCmd(t, p)
			if code != 1 {
				t.Fatalf("a tampered %s: exit %d, want 1\n%s", tc.name, code, out)
			}
			_, js, _ := runInspectCmd(t, "--json", p)
			var r inspectJSON
			if err := json.Unmarshal([]byte(js), &r); err != nil {
				t.Fatal(err)
			}
			var found bool
			for _, c := range r.Checks {
				if strings.HasPrefix(c.Name, tc.check) {
					found = true
					if c.Status != checkFailed || !strings.Contains(c.Reason, "invalid signature") {
						t.Errorf("check %q: %s (%s), want failed: invalid signature", c.Name, c.Status, c.Reason)
					}
				}
			}
			if !found {
				t.Fatalf("no check %q: %+v", tc.check, r.Checks)
			}
			if !strings.Contains(out, "failed   "+tc.check) {
				t.Errorf("the text does not show %q failed:\n%s", tc.check, out)
			}
		})
	}
}

func TestInspectRefusesNonsense(t *testing.T) {
	p := filepath.Join(t.TempDir(), "junk")
	os.WriteFile(p, []byte("this is not an MLS object\n"), 0o600)
	if code, _, errb := runInspectCmd(t, p); code != 1 || !strings.Contains(errb, "not an MLS object") {
		t.Fatalf("junk: exit %d, %q", code, errb)
	}
	// A truncated MLSMessage says what it started as.
	f := getFixture(t)
	os.WriteFile(p, f.gi[:len(f.gi)-3], 0o600)
	if code, _, errb := runInspectCmd(t, p); code != 1 || !strings.Contains(errb, "GroupInfo") {
		t.Fatalf("truncated GroupInfo: exit %d, %q", code, errb)
	}
}

// TestDrawTree builds a tree with a blank leaf among the members, an
// unmerged leaf and blank parents, through real Commits, and compares its
// picture.
func TestDrawTree(t *testing.T) {
	names := []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace"}
	ms := make([]*member, len(names))
	for i, n := range names {
		ms[i] = newMember(t, n)
	}
	alice, carol, erin := ms[0], ms[2], ms[4]
	var err error
	if alice.g, err = mls.NewGroup([]byte("drawing"), alice.kp, alice.priv); err != nil {
		t.Fatal(err)
	}
	// Alice adds everyone: her path sets nodes 1, 3 and 7.
	_, w := alice.commit(t, ms[1:], nil)
	carol.join(t, w)
	erin.join(t, w)
	// Carol removes bob (leaf 1): his path goes blank, hers (5, 3, 7) is set.
	carol.commit(t, nil, []mls.LeafIndex{1}, erin)
	// Erin adds xavier into leaf 1: node 3 lists him as unmerged; her
	// path (9, 11, 7) does not cover node 3.
	xavier := newMember(t, "xavier")
	erin.commit(t, []*member{xavier}, nil)
	// Erin removes frank (leaf 5): a blank leaf among members.
	erin.commit(t, nil, []mls.LeafIndex{5})

	got := drawTree(erin.g.Tree(), map[mls.LeafIndex]string{erin.g.Self(): "you"})
	want := `ratchet tree: 6 members in 8 leaves, cipher suite 1
7 parent
├── 3 parent, unmerged leaves 1
│   ├── 1 blank
│   │   ├── 0 leaf 0: alice
│   │   └── 2 leaf 1: xavier (unmerged at 3)
│   └── 5 parent
│       ├── 4 leaf 2: carol
│       └── 6 leaf 3: dave
└── 11 parent
    ├── 9 blank
    │   ├── 8 leaf 4: erin (you)
    │   └── 10 leaf 5: blank
    └── 13 blank
        ├── 12 leaf 6: grace
        └── 14 leaf 7: blank
`
	if got != want {
		t.Fatalf("tree picture:\n%s\nwant:\n%s", got, want)
	}

	// The same tree through inspect, as a bare tree: the same picture.
	data, err := erin.g.Tree().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "tree")
	os.WriteFile(p, data, 0o600)
	code, out, errb := runInspectCmd(t, "--group-id", hex.EncodeToString([]byte("drawing")), p)
	if code != 0 || !strings.Contains(out, strings.ReplaceAll(want, " (you)", "")) {
		t.Fatalf("inspect of the tree: exit %d\n%s\n%s", code, out, errb)
	}

	// An all-blank subtree is one line.
	small := newMember(t, "solo")
	if small.g, err = mls.NewGroup([]byte("solo"), small.kp, small.priv); err != nil {
		t.Fatal(err)
	}
	small.commit(t, []*member{newMember(t, "a"), newMember(t, "b"), newMember(t, "c"), newMember(t, "d")}, nil)
	got = drawTree(small.g.Tree(), nil)
	if !strings.Contains(got, "└── 13 blank, leaves 6-7 blank\n") || strings.Contains(got, "leaf 6") {
		t.Fatalf("blank subtree not folded:\n%s", got)
	}
}
