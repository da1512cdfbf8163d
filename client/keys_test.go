package client

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// TestAddSignatureKey: a key added with Client.AddSignatureKey is one the
// server binds to the client: a KeyPackage of the client signed with it,
// refused before, is taken, and the server lists the key after the
// registered one. Withdrawn with RemoveSignatureKey, it is refused again;
// the key the client signs with cannot be withdrawn, and a key that is no
// private key of the suite is not sent.
func TestAddSignatureKey(t *testing.T) {
	e := startEnv(t)
	ctx := ctxT(t)
	alice := e.client("alice")
	priv, pub, err := alice.cs.GenerateSignatureKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	own, err := alice.cs.SignaturePublicKey(alice.sig)
	if err != nil {
		t.Fatal(err)
	}
	// upload uploads a KeyPackage of alice signed with the new key, as
	// an MLS library that makes one key per KeyPackage does.
	upload := func() error {
		t.Helper()
		now := uint64(time.Now().Unix())
		kp, _, err := mls.NewKeyPackage(alice.cs, []byte("alice"), priv, now-3600, now+24*3600)
		if err != nil {
			t.Fatal(err)
		}
		data, err := mlsMessage(&mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp})
		if err != nil {
			t.Fatal(err)
		}
		_, err = alice.rpc.kps.UploadKeyPackages(ctx, connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
			KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: data}}}))
		return err
	}
	keys := func() [][]byte {
		t.Helper()
		ks, err := alice.SignatureKeys(ctx)
		if err != nil {
			t.Fatalf("SignatureKeys: %v", err)
		}
		return ks
	}

	if err := upload(); connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "AddSignatureKey") {
		t.Fatalf("KeyPackage with an unregistered key: %v; want permission_denied saying how to add the key", err)
	}
	if ks := keys(); len(ks) != 1 || !bytes.Equal(ks[0], own) {
		t.Fatalf("keys before: %x, want the registered one", ks)
	}

	if err := alice.AddSignatureKey(ctx, priv); err != nil {
		t.Fatalf("AddSignatureKey: %v", err)
	}
	if err := upload(); err != nil {
		t.Fatalf("KeyPackage with the added key: %v", err)
	}
	if ks := keys(); len(ks) != 2 || !bytes.Equal(ks[0], own) || !bytes.Equal(ks[1], pub) {
		t.Fatalf("keys after AddSignatureKey: %x; want the registered one, then the new one", ks)
	}
	// Once more changes nothing.
	if err := alice.AddSignatureKey(ctx, priv); err != nil {
		t.Fatalf("AddSignatureKey again: %v", err)
	}
	if ks := keys(); len(ks) != 2 {
		t.Fatalf("%d keys after adding the same key twice, want 2", len(ks))
	}

	// The client's own key stays; bad input is refused before any call.
	if err := alice.RemoveSignatureKey(ctx, own); !errors.Is(err, ErrOwnKey) {
		t.Fatalf("RemoveSignatureKey(own key): %v, want ErrOwnKey", err)
	}
	if err := alice.AddSignatureKey(ctx, []byte("not a key")); err == nil {
		t.Fatal("AddSignatureKey took bytes that are no private key")
	}
	if ks := keys(); len(ks) != 2 {
		t.Fatalf("%d keys after the refusals, want 2", len(ks))
	}

	if err := alice.RemoveSignatureKey(ctx, pub); err != nil {
		t.Fatalf("RemoveSignatureKey: %v", err)
	}
	if err := upload(); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("KeyPackage with the withdrawn key: %v, want permission_denied", err)
	}
	if ks := keys(); len(ks) != 1 || !bytes.Equal(ks[0], own) {
		t.Fatalf("keys after RemoveSignatureKey: %x, want the registered one", ks)
	}
	if err := alice.RemoveSignatureKey(ctx, pub); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("RemoveSignatureKey of a key not held: %v, want not_found", err)
	}
	// The client still works with its own key: a fresh login.
	alice.rpc.tokMu.Lock()
	alice.rpc.token = ""
	alice.rpc.tokMu.Unlock()
	if err := alice.AddSignatureKey(ctx, priv); err != nil {
		t.Fatalf("AddSignatureKey after a new login: %v", err)
	}
}
