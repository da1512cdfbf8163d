package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestClientTree(t *testing.T) {
	url := testServer(t)
	cfg := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", cfg)
	t.Setenv("HOME", cfg)
	t.Setenv("MLSDS_CLIENT_SERVER", url)
	for _, id := range []string{"alice", "bob", "carol"} {
		mustCLI(t, "init", "--id", id)
	}
	mustCLI(t, "create", "--id", "alice", "chat")
	mustCLI(t, "add", "--id", "alice", "chat", "bob", "carol")
	out := mustCLI(t, "tree", "--id", "alice", "chat")
	want := `chat, epoch 1
ratchet tree: 3 members in 4 leaves, cipher suite 1
3 parent
├── 1 parent
│   ├── 0 leaf 0: alice (you)
│   └── 2 leaf 1: bob
└── 5 blank
    ├── 4 leaf 2: carol
    └── 6 leaf 3: blank
`
	if !strings.HasSuffix(out, want) {
		t.Fatalf("client tree:\n%s\nwant:\n%s", out, want)
	}
	js := mustCLI(t, "tree", "--id", "alice", "--json", "chat")
	var v struct {
		Group string
		Epoch uint64
		Tree  treeReport
	}
	line := js[strings.LastIndex(strings.TrimSpace(js), "\n")+1:]
	if err := json.Unmarshal([]byte(line), &v); err != nil {
		t.Fatalf("--json: %v\n%s", err, js)
	}
	if v.Group != "chat" || v.Epoch != 1 || v.Tree.Members != 3 || !strings.Contains(v.Tree.Picture, "leaf 2: carol") {
		t.Fatalf("--json: %+v", v)
	}
	if code, _, errb := cli(t, "tree", "--id", "alice", "nosuchgroup"); code != 1 || !strings.Contains(errb, "not in a group") {
		t.Fatalf("tree of an unknown group: exit %d, %q", code, errb)
	}
}
