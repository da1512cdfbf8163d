package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
)

// A client may hold several signature keys on the server (RFC 9420 §5.1.1
// leaves it to the application how many): the one it registered with and
// the ones it added since. A leaf or KeyPackage naming this client may
// carry any of them, and other members' SDKs accept any of them
// (validate.go asks the server for them). This client signs with its own
// key; the calls below are for the keys an application uses besides it,
// such as the key of each KeyPackage that another MLS library makes for
// the same client, or a new key before the old one is withdrawn.

// AddSignatureKey registers the public key of sigPriv, a private key of
// this client's cipher suite, as another signature key of this client
// (AccountService.AddSignatureKey). The request proves possession of it
// with SignWithLabel(sigPriv, "mlsds add key", AddKeyTBS) (ds.AddKeyTBS).
// Adding a key the client holds changes nothing. The server bounds the
// number of keys per client (an error with code resource_exhausted).
func (c *Client) AddSignatureKey(ctx context.Context, sigPriv []byte) error {
	pub, err := c.cs.SignaturePublicKey(sigPriv)
	if err != nil {
		return fmt.Errorf("client: the key to add is no signature private key of %v: %w", c.cs, err)
	}
	sig, err := c.cs.SignWithLabel(sigPriv, ds.AddKeyLabel, ds.AddKeyTBS(c.id, pub))
	if err != nil {
		return fmt.Errorf("client: signing the proof of possession: %w", err)
	}
	_, err = c.rpc.account.AddSignatureKey(ctx, connect.NewRequest(&mlsdsv1.AddSignatureKeyRequest{
		SignatureKey: pub,
		Proof:        &mlsdsv1.AddSignatureKeyRequest_Signature{Signature: sig},
	}))
	if err != nil {
		return fmt.Errorf("client: adding a signature key: %w", err)
	}
	return nil
}

// ErrOwnKey refuses withdrawing the signature key this client signs with.
var ErrOwnKey = errors.New("client: this client signs with that key; it cannot withdraw it")

// RemoveSignatureKey withdraws sigPub, one of this client's signature keys
// (AccountService.RemoveSignatureKey): the server then refuses leaves,
// KeyPackages and logins that carry it. The key this client signs with
// cannot be withdrawn (ErrOwnKey); the server refuses withdrawing a key
// the client does not hold (code not_found).
func (c *Client) RemoveSignatureKey(ctx context.Context, sigPub []byte) error {
	own, err := c.cs.SignaturePublicKey(c.sig)
	if err != nil {
		return err
	}
	if bytes.Equal(own, sigPub) {
		return ErrOwnKey
	}
	if _, err := c.rpc.account.RemoveSignatureKey(ctx, connect.NewRequest(&mlsdsv1.RemoveSignatureKeyRequest{SignatureKey: sigPub})); err != nil {
		return fmt.Errorf("client: withdrawing a signature key: %w", err)
	}
	return nil
}

// SignatureKeys returns the signature keys the server holds for this
// client, oldest first (AccountService.GetClientKeys).
func (c *Client) SignatureKeys(ctx context.Context) ([][]byte, error) {
	res, err := c.rpc.account.GetClientKeys(ctx, connect.NewRequest(&mlsdsv1.GetClientKeysRequest{ClientIds: []string{c.id}}))
	if err != nil {
		return nil, fmt.Errorf("client: reading this client's signature keys: %w", err)
	}
	for _, k := range res.Msg.Clients {
		if k.ClientId == c.id {
			return k.SignatureKeys, nil
		}
	}
	return nil, fmt.Errorf("client: the server lists no keys of %q", c.id)
}
