package main

import (
	"strings"
	"testing"
)

// TestClientDeniable runs a deniable group through the CLI: created with
// --deniable, members added (their Welcomes name no group; bob, listening,
// and carol, at her next command, join all the same), messages, a removal
// (carol's commands then say she is out), and a leave. Join links, which
// would link their maker to the group on the server, are refused.
func TestClientDeniable(t *testing.T) {
	url := testServer(t)
	cfg := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", cfg)
	t.Setenv("HOME", cfg)
	t.Setenv("MLSDS_CLIENT_SERVER", url)
	for _, id := range []string{"alice", "bob", "carol"} {
		mustCLI(t, "init", "--id", id)
	}

	out := mustCLI(t, "create", "--id", "alice", "--deniable", "chat")
	if !strings.Contains(out, "[chat] you created the group (epoch 0, members: alice)") {
		t.Fatalf("create --deniable: %q", out)
	}
	short := groupID(t, "chat", "--id", "alice")[:8]
	bobOut, stopBob := listenCLI(t, "--id", "bob")
	out = mustCLI(t, "add", "--id", "alice", "chat", "bob", "carol")
	if !strings.Contains(out, "[chat] you added bob and carol") || !strings.Contains(out, "[chat] epoch 1 (members: alice, bob, carol)") {
		t.Fatalf("add: %q", out)
	}
	mustCLI(t, "send", "--id", "alice", "chat", "Hello,", "Bob")
	waitOutput(t, bobOut, "["+short+"] you joined (epoch 1, members: alice, bob, carol)\n["+short+"] alice: Hello, Bob\n")

	// carol was not running: her next command takes in the Welcome and
	// what was sent since.
	code, out, errb := cli(t, "send", "--id", "carol", "chat", "hi all")
	if code != 1 || !strings.Contains(errb, `not in a group "chat"`) {
		t.Fatalf("carol sends to a name she did not give: exit %d, %q", code, errb)
	}
	if !strings.Contains(out, "["+short+"] you joined") || !strings.Contains(out, "["+short+"] alice: Hello, Bob") {
		t.Fatalf("carol's first command: %q", out)
	}
	mustCLI(t, "send", "--id", "carol", short, "hi all")
	waitOutput(t, bobOut, "["+short+"] carol: hi all\n")
	if out := mustCLI(t, "groups", "--id", "carol"); !strings.Contains(out, short+"  epoch 1  members: alice, bob, carol") {
		t.Fatalf("carol's groups: %q", out)
	}

	if code, _, errb := cli(t, "link", "--id", "alice", "chat"); code != 1 || !strings.Contains(errb, "deniable") {
		t.Fatalf("link of a deniable group: exit %d, %q", code, errb)
	}

	out = mustCLI(t, "remove", "--id", "alice", "chat", "carol")
	if !strings.Contains(out, "[chat] you removed carol") {
		t.Fatalf("remove: %q", out)
	}
	waitOutput(t, bobOut, "["+short+"] alice removed carol\n["+short+"] epoch 2 (members: alice, bob)\n")
	code, out, errb = cli(t, "send", "--id", "carol", short, "still here?")
	if code != 1 || !strings.Contains(out, "alice removed you: you are no longer a member") || !strings.Contains(errb, "no longer a member of") {
		t.Fatalf("send after removal: exit %d, %q, %q", code, out, errb)
	}
	if code := stopBob(); code != 0 {
		t.Fatalf("listen exit %d", code)
	}

	// bob leaves; alice's client commits his removal.
	if out := mustCLI(t, "leave", "--id", "bob", short); !strings.Contains(out, "] you left\n") {
		t.Fatalf("leave: %q", out)
	}
	aliceOut, stopAlice := listenCLI(t, "--id", "alice", "chat")
	waitOutput(t, aliceOut, "[chat] bob left\n")
	if code := stopAlice(); code != 0 {
		t.Fatalf("listen exit %d", code)
	}
	out = mustCLI(t, "groups", "--id", "alice", "--json")
	if !strings.Contains(out, `"members":["alice"]`) || !strings.Contains(out, `"status":"member"`) {
		t.Fatalf("alice's groups: %q", out)
	}
}
