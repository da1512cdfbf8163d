package ds

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"

	"github.com/mlsds/mlsds/mls"
)

// Signature keys. A client may hold several signature keys (RFC 9420
// §5.1.1 leaves it to the application how many): it registers with one
// and adds more with AddSignatureKey, proving that it holds each one, for
// key rotation and for MLS libraries that make a new key for each
// KeyPackage. Each key is bound to the client as the first one is: a leaf
// whose credential names the client may carry any of them (binding.go),
// the directory publishes all of them (ClientKeys), and a login may be
// signed with any of them. A client holds at most
// Config.MaxSignatureKeysPerClient keys and at least one.

// AddKeyLabel is the SignWithLabel label (RFC 9420 §5.1.2) of the proof
// of possession of a key being added.
const AddKeyLabel = "mlsds add key"

// WhatSignatureKeys is the TooLargeError.What of the bound on a client's
// keys.
const WhatSignatureKeys = "signature keys per client"

// ErrLastKey refuses withdrawing a client's only signature key.
var ErrLastKey = errors.New("a client keeps at least one signature key: add the new key first (AccountService.AddSignatureKey), then remove the old one")

// AddKeyTBS returns the content signed, with AddKeyLabel and the new
// key, to prove possession of it:
//
//	struct {
//	  opaque client_id<V>;
//	  opaque signature_key<V>;
//	} AddKeyTBS;
func AddKeyTBS(clientID string, signatureKey []byte) []byte {
	var b cryptobyte.Builder
	addOpaqueV(&b, []byte(clientID))
	addOpaqueV(&b, signatureKey)
	return b.BytesOrPanic()
}

// KeyProof proves possession of a signature key: exactly one of its
// fields is set.
type KeyProof struct {
	// Signature is SignWithLabel(key, AddKeyLabel, AddKeyTBS).
	Signature []byte
	// KeyPackage is a KeyPackage (an MLSMessage, or bare) whose leaf_node
	// carries the key and a credential naming the client, signed with the
	// key, as any MLS library makes one.
	KeyPackage []byte
}

// AddSignatureKey adds key to caller's signature keys once proof shows
// that caller holds it. Adding a key the client holds changes nothing. A
// *TooLargeError when the client holds Config.MaxSignatureKeysPerClient
// keys already.
func (s *Service) AddSignatureKey(ctx context.Context, caller string, key []byte, proof KeyProof) error {
	if err := s.allow(caller); err != nil {
		return err
	}
	if len(key) == 0 {
		return fmt.Errorf("%w: empty signature key", ErrInvalidArgument)
	}
	c, err := s.store.Client(ctx, caller)
	if err != nil {
		return err
	}
	switch {
	case len(proof.Signature) > 0 && len(proof.KeyPackage) > 0:
		return fmt.Errorf("%w: give either a signature or a KeyPackage as the proof, not both", ErrInvalidArgument)
	case len(proof.Signature) > 0:
		if err := c.CipherSuite.VerifyWithLabel(key, AddKeyLabel, AddKeyTBS(caller, key), proof.Signature); err != nil {
			return fmt.Errorf("%w: the proof of possession does not verify: it must be SignWithLabel(new key, %q, AddKeyTBS) (RFC 9420 §5.1.2) "+
				"with the private key of signature_key in suite %d, AddKeyTBS being the TLS encoding of {opaque client_id<V>; opaque signature_key<V>} "+
				"with the caller's client id and the new key", ErrPermissionDenied, AddKeyLabel, c.CipherSuite)
		}
	case len(proof.KeyPackage) > 0:
		kp, err := s.keyPackageProof(proof.KeyPackage, c.CipherSuite, key)
		if err != nil {
			return err
		}
		id, err := s.verifiedClientID(&kp.LeafNode.Credential, key)
		if err != nil {
			return err
		}
		if id != caller {
			return fmt.Errorf("%w: the KeyPackage's credential names %q, not the caller %q", ErrPermissionDenied, id, caller)
		}
	default:
		return fmt.Errorf("%w: missing proof of possession of the new key: a signature SignWithLabel(new key, %q, AddKeyTBS) or a KeyPackage signed with it",
			ErrInvalidArgument, AddKeyLabel)
	}
	return s.store.AddClientKey(ctx, caller, key, s.now(), s.cfg.MaxSignatureKeysPerClient)
}

// RemoveSignatureKey withdraws key from caller's signature keys: leaves
// and KeyPackages carrying it are no longer accepted, nor logins signed
// with it. ErrNotFound if the client does not hold it; ErrLastKey if it
// is the client's only key.
func (s *Service) RemoveSignatureKey(ctx context.Context, caller string, key []byte) error {
	if err := s.allow(caller); err != nil {
		return err
	}
	return s.store.RemoveClientKey(ctx, caller, key)
}

// keyPackageProof checks a KeyPackage presented as proof of possession of
// key: valid now (RFC 9420 §10.1, both signatures checked with its
// leaf_node's signature_key), in suite cs, and carrying key.
func (s *Service) keyPackageProof(data []byte, cs mls.CipherSuite, key []byte) (*mls.KeyPackage, error) {
	kp, err := parseKeyPackage(data)
	if err != nil {
		return nil, err
	}
	if err := validateKeyPackage(kp, s.now(), s.cfg.MaxKeyPackageLifetime); err != nil {
		return nil, err
	}
	if kp.CipherSuite != cs {
		return nil, fmt.Errorf("%w: the KeyPackage is for cipher suite %d, not %d", ErrInvalidArgument, kp.CipherSuite, cs)
	}
	if !bytes.Equal(kp.LeafNode.SignatureKey, key) {
		return nil, fmt.Errorf("%w: the KeyPackage's leaf_node carries another signature key than the one given; a KeyPackage proves possession only of its own key",
			ErrPermissionDenied)
	}
	return kp, nil
}

// VerifyRegisterKeyPackage checks the KeyPackage a registration gives as
// its proof of possession instead of a RegisterTBS signature: valid, in
// suite cs, its leaf_node carrying signatureKey and exactly credential
// (TLS-encoded, as in the request).
func (s *Service) VerifyRegisterKeyPackage(credential, signatureKey []byte, cs mls.CipherSuite, keyPackage []byte) error {
	kp, err := s.keyPackageProof(keyPackage, cs, signatureKey)
	if err != nil {
		return err
	}
	got, err := kp.LeafNode.Credential.MarshalBinary()
	if err != nil || !bytes.Equal(got, credential) {
		return fmt.Errorf("%w: the KeyPackage's leaf_node carries another credential than the request's", ErrPermissionDenied)
	}
	return nil
}

// VerifyClientSignature checks that sig is SignWithLabel(key, label,
// content) with one of clientID's registered keys, and returns the
// client. ErrNotFound for an unknown client, ErrPermissionDenied if no
// key verifies it.
func (s *Service) VerifyClientSignature(ctx context.Context, clientID, label string, content, sig []byte) (Client, error) {
	c, err := s.store.Client(ctx, clientID)
	if err != nil {
		return Client{}, err
	}
	keys, err := s.binder().keysOf(ctx, clientID)
	if err != nil {
		return Client{}, err
	}
	for _, k := range keys {
		if c.CipherSuite.VerifyWithLabel(k, label, content, sig) == nil {
			return c, nil
		}
	}
	return Client{}, fmt.Errorf("%w: the signature does not verify with any key of %q", ErrPermissionDenied, clientID)
}
