package security

import (
	"os"
	"path/filepath"
	"testing"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/internal/pgtest"
	"github.com/mlsds/mlsds/internal/testkit"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// TestChallengeAcrossNodes: behind a load balancer, a client gets its
// challenge from one `mlsds serve` and answers it to another that shares
// the auth secret and the database; the challenge works once, on whichever
// node sees it first, and never again on a third.
func TestChallengeAcrossNodes(t *testing.T) {
	url := pgtest.NewDatabase(t)
	secret := filepath.Join(t.TempDir(), "auth.key")
	if err := os.WriteFile(secret, []byte("5f0c2b6a8d4e1f3a7c9b0d2e4f6a8c1b3d5e7f9a0b2c4d6e8f1a3b5c7d9e0f2a"), 0o600); err != nil {
		t.Fatal(err)
	}
	var nodes []*testkit.Serve
	for range 3 {
		nodes = append(nodes, testkit.StartServe(t, "--store", url, "--auth-secret-file", secret, "--auth-rate-limit", "-1"))
	}
	alice := testkit.NewClient(t, nodes[0].URL, "alice")
	if err := alice.Register("", ""); err != nil {
		t.Fatal(err)
	}
	ch, err := alice.Auth.GetChallenge(bg, connect.NewRequest(&mlsdsv1.GetChallengeRequest{ClientId: "alice"}))
	if err != nil {
		t.Fatal(err)
	}
	sig, err := testkit.Suite.SignWithLabel(alice.SigPriv, ch.Msg.Label, ch.Msg.Challenge)
	if err != nil {
		t.Fatal(err)
	}
	req := &mlsdsv1.AuthenticateRequest{ClientId: "alice", Challenge: ch.Msg.Challenge, Signature: sig}
	on := func(n *testkit.Serve) error {
		c := testkit.NewClient(t, n.URL, "alice")
		_, err := c.Auth.Authenticate(bg, connect.NewRequest(req))
		return err
	}
	if err := on(nodes[1]); err != nil {
		t.Fatalf("node 2 refused node 1's challenge: %v", err)
	}
	if err := on(nodes[2]); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("node 3 took a challenge node 2 had redeemed: %v, want unauthenticated", err)
	}
	if err := on(nodes[0]); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("node 1 took its own challenge after node 2 redeemed it: %v, want unauthenticated", err)
	}
}
