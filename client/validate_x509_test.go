package client

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// x509CA makes a CA and returns a function that issues leaf certificates
// naming a client (SAN URI mlsds:client/<id>) for an Ed25519 key, as an
// x509 credential.
func x509CA(t *testing.T) (*x509.Certificate, func(id string, pub []byte, notAfter time.Time) mls.Credential) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ca, func(id string, pub []byte, notAfter time.Time) mls.Credential {
		leaf := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: id},
			NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter, URIs: []*url.URL{ds.X509ClientURI(id)}}
		der, err := x509.CreateCertificate(rand.Reader, leaf, ca, ed25519.PublicKey(pub), key)
		if err != nil {
			t.Fatal(err)
		}
		return mls.Credential{CredentialType: mls.CredentialTypeX509, Certificates: [][]byte{der}}
	}
}

// TestDirectoryValidatorX509: the default validator accepts an x509 leaf
// whose certificate names a client the directory binds the key to and
// certifies that key, and, with Config.X509Roots, verifies its chain.
func TestDirectoryValidatorX509(t *testing.T) {
	ca, issue := x509CA(t)
	_, otherIssue := x509CA(t)
	_, pub, err := mls.CipherSuite(1).GenerateSignatureKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	_, pub2, _ := mls.CipherSuite(1).GenerateSignatureKeyPair()
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	later := time.Now().Add(time.Hour)
	ctx := context.Background()
	for _, withRoots := range []bool{false, true} {
		cfg := Config{}
		if withRoots {
			cfg.X509Roots = roots
		}
		v := &directoryValidator{c: &Client{cfg: cfg}, bound: map[string]bool{bindingKey("carol", pub): true}}
		if err := v.ValidateCredential(ctx, nil, 0, issue("carol", pub, later), pub); err != nil {
			t.Errorf("roots %v: a bound x509 leaf was refused: %v", withRoots, err)
		}
		refuse := map[string]mls.Credential{
			"certifies another key": issue("carol", pub2, later),
		}
		if withRoots {
			refuse["chains to another CA"] = otherIssue("carol", pub, later)
			refuse["expired"] = issue("carol", pub, time.Now().Add(-time.Hour))
		}
		for name, cred := range refuse {
			err := v.ValidateCredential(ctx, nil, 0, cred, pub)
			if !errors.Is(err, ErrCredentialUnbound) {
				t.Errorf("roots %v: %s: %v; want ErrCredentialUnbound", withRoots, name, err)
			}
		}
	}
	if id, err := credentialClient(&mls.Credential{CredentialType: mls.CredentialTypeX509, Certificates: issue("b%C3%B6b", pub, later).Certificates}); err != nil || id != "b%C3%B6b" {
		t.Errorf("credentialClient = %q, %v", id, err)
	}
	if id, _ := credentialClient(&mls.Credential{CredentialType: mls.CredentialTypeX509, Certificates: issue("böb", pub, later).Certificates}); id != "böb" {
		t.Errorf("a client id with non-ASCII letters came back as %q", id)
	}
}

// TestKeyPackagesListX509: the SDK's KeyPackages list x509 besides basic
// in capabilities.credentials, so x509 members can join its groups.
func TestKeyPackagesListX509(t *testing.T) {
	kp, _, err := mls.NewKeyPackageWith(1, []byte("alice"), nil, 0, 1<<40, greaseKeyPackages)
	if err != nil {
		t.Fatal(err)
	}
	creds := kp.LeafNode.Capabilities.Credentials
	if !slices.Contains(creds, mls.CredentialTypeBasic) || !slices.Contains(creds, mls.CredentialTypeX509) {
		t.Fatalf("capabilities.credentials = %v; want basic and x509", creds)
	}
	if err := mls.ValidateKeyPackage(kp, time.Now(), 0); err != nil {
		t.Fatalf("the KeyPackage does not validate: %v", err)
	}
}
