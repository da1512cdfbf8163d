package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// Interoperability with apps built on other MLS libraries: several
// signature keys per client, registration and key binding proven by a
// KeyPackage, logins with the app's identity provider's tokens, and x509
// credentials.

var bothCredentials = []mls.CredentialType{mls.CredentialTypeBasic, mls.CredentialTypeX509}

// keyPackageWith builds a KeyPackage of cred with the key pair
// (sigPriv, sigPub), listing creds in its capabilities, as an MLSMessage.
func keyPackageWith(t testing.TB, cred mls.Credential, sigPriv, sigPub []byte, creds []mls.CredentialType) ([]byte, *mls.KeyPackage) {
	t.Helper()
	_, initPub, err := suite.GenerateKEMKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	now := uint64(time.Now().Unix())
	kp := &mls.KeyPackage{
		Version: mls.ProtocolVersionMLS10, CipherSuite: suite, InitKey: initPub,
		LeafNode: *leafNodeWith(t, cred, sigPriv, sigPub, creds, now),
	}
	if err := kp.Sign(sigPriv); err != nil {
		t.Fatal(err)
	}
	return mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp}), kp
}

func leafNodeWith(t testing.TB, cred mls.Credential, sigPriv, sigPub []byte, creds []mls.CredentialType, now uint64) *mls.LeafNode {
	t.Helper()
	_, encPub, err := suite.GenerateKEMKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	ln := &mls.LeafNode{
		EncryptionKey: encPub, SignatureKey: sigPub, Credential: cred,
		Capabilities: mls.Capabilities{
			Versions:     []mls.ProtocolVersion{mls.ProtocolVersionMLS10},
			CipherSuites: []mls.CipherSuite{suite},
			Credentials:  creds,
		},
		LeafNodeSource: mls.LeafNodeSourceKeyPackage,
		Lifetime:       &mls.Lifetime{NotBefore: now - 3600, NotAfter: now + 7*24*3600},
	}
	if err := ln.Sign(suite, sigPriv, nil, 0); err != nil {
		t.Fatal(err)
	}
	return ln
}

// createGroupOf creates a transparent group of m alone whose leaf lists
// creds, so that members with those credential types can be added.
func (m *member) createGroupOf(gid []byte, creds []mls.CredentialType) *tgroup {
	m.t.Helper()
	rt, err := mls.NewRatchetTree(suite, []*mls.Node{{Leaf: leafNodeWith(m.t, m.cred, m.sigPriv, m.sigPub, creds, uint64(time.Now().Unix()))}})
	if err != nil {
		m.t.Fatal(err)
	}
	gi := &mls.GroupInfo{
		GroupContext:    mls.GroupContext{Version: mls.ProtocolVersionMLS10, CipherSuite: suite, GroupID: gid, TreeHash: rt.TreeHash()},
		ConfirmationTag: randBytes(suite.HashSize()),
	}
	if err := gi.Sign(m.sigPriv); err != nil {
		m.t.Fatal(err)
	}
	st, err := mls.NewPublicGroupState(gi, rt)
	if err != nil {
		m.t.Fatal(err)
	}
	tree, err := rt.MarshalBinary()
	if err != nil {
		m.t.Fatal(err)
	}
	if _, err := m.groups.CreateGroup(context.Background(), connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: gid, GroupInfo: mlsMessage(m.t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}), RatchetTree: tree})); err != nil {
		m.t.Fatalf("CreateGroup: %v", err)
	}
	return &tgroup{st: st}
}

// addClaimed claims a KeyPackage of id and commits its Add to g.
func (m *member) addClaimed(g *tgroup, id string) (*tgroup, error) {
	m.t.Helper()
	msg, err := mls.ParseMLSMessage(m.claim(id))
	if err != nil {
		m.t.Fatal(err)
	}
	commit, _, gi, next := m.commitAdd(g, msg.KeyPackage)
	_, err = m.sendBundle(commit, gi)
	return next, err
}

func newKeyPair(t testing.TB) (priv, pub []byte) {
	t.Helper()
	priv, pub, err := suite.GenerateSignatureKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	return priv, pub
}

func (m *member) addKeyBySignature(priv, pub []byte) error {
	sig, err := suite.SignWithLabel(priv, ds.AddKeyLabel, ds.AddKeyTBS(m.id, pub))
	if err != nil {
		m.t.Fatal(err)
	}
	_, err = m.account().AddSignatureKey(context.Background(), connect.NewRequest(&mlsdsv1.AddSignatureKeyRequest{
		SignatureKey: pub, Proof: &mlsdsv1.AddSignatureKeyRequest_Signature{Signature: sig}}))
	return err
}

func (m *member) addKeyByKeyPackage(kp, pub []byte) error {
	_, err := m.account().AddSignatureKey(context.Background(), connect.NewRequest(&mlsdsv1.AddSignatureKeyRequest{
		SignatureKey: pub, Proof: &mlsdsv1.AddSignatureKeyRequest_KeyPackage{KeyPackage: kp}}))
	return err
}

func (m *member) keysInDirectory(id string) [][]byte {
	m.t.Helper()
	res, err := m.account().GetClientKeys(context.Background(), connect.NewRequest(&mlsdsv1.GetClientKeysRequest{ClientIds: []string{id}}))
	if err != nil || len(res.Msg.Clients) != 1 {
		m.t.Fatalf("GetClientKeys(%s) = %v, %v", id, res, err)
	}
	return res.Msg.Clients[0].SignatureKeys
}

func upload(m *member, kp []byte) error {
	_, err := m.kps.UploadKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
		KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: kp}}}))
	return err
}

// TestSeveralSignatureKeys: a client adds keys by signature and by
// KeyPackage, uses them for KeyPackages that others add to groups and for
// logins, and withdraws them, never the last.
func TestSeveralSignatureKeys(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	alice, bob := e.client("alice"), e.client("bob")

	// A KeyPackage signed with a key alice has not registered is refused,
	// saying how to register it.
	priv2, pub2 := newKeyPair(t)
	kp2, _ := keyPackageWith(t, alice.cred, priv2, pub2, bothCredentials)
	ce := connectErr(t, upload(alice, kp2), connect.CodePermissionDenied)
	if !strings.Contains(ce.Message(), "AddSignatureKey") {
		t.Errorf("upload with an unknown key: %q; want it to say how to register the key (AddSignatureKey)", ce.Message())
	}

	// By signature: a proof made with another key is refused.
	otherPriv, _ := newKeyPair(t)
	connectErr(t, alice.addKeyBySignature(otherPriv, pub2), connect.CodePermissionDenied)
	if err := alice.addKeyBySignature(priv2, pub2); err != nil {
		t.Fatalf("AddSignatureKey by signature: %v", err)
	}
	if err := upload(alice, kp2); err != nil {
		t.Fatalf("upload of a KeyPackage with the added key: %v", err)
	}

	// By KeyPackage, as a library that makes a new key for each
	// KeyPackage does: one naming bob (signed with the new key) or
	// carrying another key is refused.
	priv3, pub3 := newKeyPair(t)
	kpBob, _ := keyPackageWith(t, bob.cred, priv3, pub3, bothCredentials)
	connectErr(t, alice.addKeyByKeyPackage(kpBob, pub3), connect.CodePermissionDenied)
	kp3, _ := keyPackageWith(t, alice.cred, priv3, pub3, bothCredentials)
	connectErr(t, alice.addKeyByKeyPackage(kp3, pub2), connect.CodePermissionDenied)
	if err := alice.addKeyByKeyPackage(kp3, pub3); err != nil {
		t.Fatalf("AddSignatureKey by KeyPackage: %v", err)
	}
	if keys := alice.keysInDirectory("alice"); len(keys) != 3 {
		t.Fatalf("the directory lists %d keys of alice, want 3", len(keys))
	}

	// bob adds alice with the KeyPackage signed by the third key; the
	// server binds the leaf to alice (the key is hers).
	// Only kp3 is offered: drop kp2 first.
	list, err := alice.kps.ListKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ListKeyPackagesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	var refs [][]byte
	for _, k := range list.Msg.KeyPackages {
		refs = append(refs, k.Ref)
	}
	if _, err := alice.kps.DeleteKeyPackages(ctx, connect.NewRequest(&mlsdsv1.DeleteKeyPackagesRequest{Refs: refs})); err != nil {
		t.Fatal(err)
	}
	if err := upload(alice, kp3); err != nil {
		t.Fatalf("upload with the key added by KeyPackage: %v", err)
	}
	g := bob.createGroupOf(groupID("keys"), bothCredentials)
	g, err = bob.addClaimed(g, "alice")
	if err != nil {
		t.Fatalf("Add of alice with a KeyPackage of her third key: %v", err)
	}
	if !bytesEqual(g.st.Tree().Leaf(leafOf(t, g, "alice")).SignatureKey, pub3) {
		t.Fatal("alice's leaf does not carry her third key")
	}

	// Logins with any registered key.
	first := alice.sigPriv
	alice.sigPriv = priv2
	alice.login()

	// Withdrawing: the first key; a login with it fails afterwards, and
	// the last key stays.
	if _, err := alice.account().RemoveSignatureKey(ctx, connect.NewRequest(&mlsdsv1.RemoveSignatureKeyRequest{SignatureKey: alice.sigPub})); err != nil {
		t.Fatalf("RemoveSignatureKey: %v", err)
	}
	alice.sigPriv = first
	_, err = alice.tryLogin()
	connectErr(t, err, connect.CodeUnauthenticated)
	kpOld, _ := alice.keyPackage() // signed with the withdrawn key
	connectErr(t, upload(alice, kpOld), connect.CodePermissionDenied)
	if _, err := alice.account().RemoveSignatureKey(ctx, connect.NewRequest(&mlsdsv1.RemoveSignatureKeyRequest{SignatureKey: pub2})); err != nil {
		t.Fatalf("RemoveSignatureKey: %v", err)
	}
	_, err = alice.account().RemoveSignatureKey(ctx, connect.NewRequest(&mlsdsv1.RemoveSignatureKeyRequest{SignatureKey: pub3}))
	connectErr(t, err, connect.CodeFailedPrecondition)
	_, err = alice.account().RemoveSignatureKey(ctx, connect.NewRequest(&mlsdsv1.RemoveSignatureKeyRequest{SignatureKey: pub2}))
	connectErr(t, err, connect.CodeNotFound)
	if keys := alice.keysInDirectory("alice"); len(keys) != 1 || !bytesEqual(keys[0], pub3) {
		t.Fatalf("alice's keys after the removals: %d, want only the third", len(keys))
	}
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }

// TestRegisterByKeyPackage: a KeyPackage made with the key proves
// possession at registration, instead of the RegisterTBS signature.
func TestRegisterByKeyPackage(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	m := e.newMember("kim")
	req := func(kp []byte) *mlsdsv1.RegisterClientRequest {
		return &mlsdsv1.RegisterClientRequest{Credential: m.credBytes(), SignatureKey: m.sigPub, CipherSuite: uint32(suite), KeyPackage: kp}
	}
	// Another client's credential, or another key, is refused.
	other := e.newMember("lee")
	kpOther, _ := keyPackageWith(t, other.cred, m.sigPriv, m.sigPub, bothCredentials)
	_, err := m.auth.RegisterClient(ctx, connect.NewRequest(req(kpOther)))
	connectErr(t, err, connect.CodePermissionDenied)
	kpOtherKey, _ := keyPackageWith(t, m.cred, other.sigPriv, other.sigPub, bothCredentials)
	_, err = m.auth.RegisterClient(ctx, connect.NewRequest(req(kpOtherKey)))
	connectErr(t, err, connect.CodePermissionDenied)
	// A KeyPackage whose signature was made with another key.
	kpBad, k := keyPackageWith(t, m.cred, m.sigPriv, m.sigPub, bothCredentials)
	if err := k.Sign(other.sigPriv); err != nil {
		t.Fatal(err)
	}
	kpBad = mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: k})
	_, err = m.auth.RegisterClient(ctx, connect.NewRequest(req(kpBad)))
	connectErr(t, err, connect.CodeInvalidArgument)

	kp, _ := keyPackageWith(t, m.cred, m.sigPriv, m.sigPub, bothCredentials)
	res, err := m.auth.RegisterClient(ctx, connect.NewRequest(req(kp)))
	if err != nil {
		t.Fatalf("RegisterClient by KeyPackage: %v", err)
	}
	if res.Msg.ClientId != "kim" {
		t.Fatalf("registered %q", res.Msg.ClientId)
	}
	m.login()
	if err := upload(m, kp); err != nil {
		t.Fatalf("upload after registering by KeyPackage: %v", err)
	}
}

// jwk returns the JWK of an RS256, ES256 or EdDSA public key.
func jwk(t *testing.T, kid string, pub any) map[string]string {
	b64 := base64.RawURLEncoding.EncodeToString
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return map[string]string{"kty": "RSA", "kid": kid, "use": "sig", "n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
	case *ecdsa.PublicKey:
		raw, err := k.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		return map[string]string{"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "x": b64(raw[1:33]), "y": b64(raw[33:])}
	case ed25519.PublicKey:
		return map[string]string{"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(k)}
	}
	t.Fatalf("no JWK for %T", pub)
	return nil
}

// TestIDTokenLogin: Authenticate with a token of the app's identity
// provider, checked against the JWKS, issuer and audience.
func TestIDTokenLogin(t *testing.T) {
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edPub, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, strangerPriv, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	set, err := json.Marshal(map[string]any{"keys": []any{jwk(t, "ec1", &ecKey.PublicKey), jwk(t, "ed1", edPub), jwk(t, "rsa1", &rsaKey.PublicKey)}})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := server.ParseJWKS(set)
	if err != nil {
		t.Fatalf("ParseJWKS: %v", err)
	}
	const iss, aud = "https://id.example", "mlsds-app"
	e := startEnv(t, func(_ *ds.Config, c *server.Config) {
		c.LoginKeys, c.LoginIssuer, c.LoginAudience = keys, iss, aud
	})
	ctx := context.Background()
	alice := e.newMember("alice")
	alice.register("")

	type claims = jwt.MapClaims
	good := func() claims {
		return claims{"iss": iss, "aud": aud, "sub": "alice", "exp": time.Now().Add(time.Hour).Unix()}
	}
	sign := func(method jwt.SigningMethod, kid string, key any, c claims) string {
		tok := jwt.NewWithClaims(method, c)
		tok.Header["kid"] = kid
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	login := func(tok string) (string, error) {
		res, err := alice.auth.Authenticate(ctx, connect.NewRequest(&mlsdsv1.AuthenticateRequest{IdToken: tok}))
		if err != nil {
			return "", err
		}
		return res.Msg.SessionToken, nil
	}

	// Good tokens, ES256 and EdDSA; the session token works.
	tok, err := login(sign(jwt.SigningMethodES256, "ec1", ecKey, good()))
	if err != nil {
		t.Fatalf("ES256 id_token: %v", err)
	}
	alice.token = tok
	if _, err := alice.kps.ListKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ListKeyPackagesRequest{})); err != nil {
		t.Fatalf("a call with the session token of an id_token login: %v", err)
	}
	c := good()
	delete(c, "sub")
	c["mlsds_client_id"], c["mlsds_user_id"] = "alice", "alice"
	if _, err := login(sign(jwt.SigningMethodEdDSA, "ed1", edPriv, c)); err != nil {
		t.Fatalf("EdDSA id_token with mlsds_client_id: %v", err)
	}
	if _, err := login(sign(jwt.SigningMethodRS256, "rsa1", rsaKey, good())); err != nil {
		t.Fatalf("RS256 id_token: %v", err)
	}

	bad := map[string]string{}
	c = good()
	c["iss"] = "https://evil.example"
	bad["wrong issuer"] = sign(jwt.SigningMethodES256, "ec1", ecKey, c)
	c = good()
	c["aud"] = "another-app"
	bad["wrong audience"] = sign(jwt.SigningMethodES256, "ec1", ecKey, c)
	c = good()
	c["exp"] = time.Now().Add(-time.Hour).Unix()
	bad["expired"] = sign(jwt.SigningMethodES256, "ec1", ecKey, c)
	c = good()
	delete(c, "exp")
	bad["without exp"] = sign(jwt.SigningMethodES256, "ec1", ecKey, c)
	bad["unknown kid"] = sign(jwt.SigningMethodEdDSA, "ed2", strangerPriv, good())
	bad["known kid, another key"] = sign(jwt.SigningMethodEdDSA, "ed1", strangerPriv, good())
	bad["algorithm of another key"] = sign(jwt.SigningMethodEdDSA, "ec1", edPriv, good())
	// The classic confusion: HS256 keyed with the RSA public key's bytes.
	rsaPubDER, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	bad["HS256 keyed with the RSA public key"] = sign(jwt.SigningMethodHS256, "rsa1", rsaPubDER, good())
	bad["RS256 by another RSA key"] = sign(jwt.SigningMethodRS256, "rsa1", mustRSA(t), good())
	bad["alg none"] = func() string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodNone, good()).SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	c = good()
	c["sub"] = "nobody"
	bad["unregistered client"] = sign(jwt.SigningMethodES256, "ec1", ecKey, c)
	c = good()
	c["mlsds_user_id"] = "mallory"
	bad["another user"] = sign(jwt.SigningMethodES256, "ec1", ecKey, c)
	for name, tok := range bad {
		_, err := login(tok)
		if ce := connectErr(t, err, connect.CodeUnauthenticated); ce == nil {
			t.Errorf("%s: accepted", name)
		}
	}

	// A server without --login-jwks refuses id_token logins, saying how
	// to turn them on.
	plain := startEnv(t)
	m := plain.newMember("alice")
	m.register("")
	_, err = m.auth.Authenticate(ctx, connect.NewRequest(&mlsdsv1.AuthenticateRequest{IdToken: sign(jwt.SigningMethodES256, "ec1", ecKey, good())}))
	ce := connectErr(t, err, connect.CodeFailedPrecondition)
	if !strings.Contains(ce.Message(), "--login-jwks") {
		t.Errorf("refusal %q does not say how to turn id_token logins on", ce.Message())
	}
}

func mustRSA(t *testing.T) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testCA is a certificate authority made in the test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

// issue returns an x509 credential of a leaf certificate that names
// client by its SAN URI and certifies the Ed25519 key pub.
func (ca *testCA) issue(t *testing.T, client string, pub []byte, notAfter time.Time) mls.Credential {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: client},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, URIs: []*url.URL{ds.X509ClientURI(client)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, ed25519.PublicKey(pub), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return mls.Credential{CredentialType: mls.CredentialTypeX509, Certificates: [][]byte{der}}
}

// TestX509Credentials: clients with x509 credentials register, publish
// KeyPackages and are added to transparent groups; certificates that name
// another client, expired ones, those of an unknown CA and those of
// another key are refused.
func TestX509Credentials(t *testing.T) {
	ca := newTestCA(t, "app CA")
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	e := startEnv(t, func(c *ds.Config, _ *server.Config) { c.X509Roots = roots })
	ctx := context.Background()
	later := time.Now().Add(12 * time.Hour)

	carol := e.newMember("carol")
	carol.cred = ca.issue(t, "carol", carol.sigPub, later)
	carol.register("")
	carol.login()
	kp, _ := keyPackageWith(t, carol.cred, carol.sigPriv, carol.sigPub, bothCredentials)
	if err := upload(carol, kp); err != nil {
		t.Fatalf("upload of an x509 KeyPackage: %v", err)
	}
	alice := e.client("alice")
	g := alice.createGroupOf(groupID("x509"), bothCredentials)
	g, err := alice.addClaimed(g, "carol")
	if err != nil {
		t.Fatalf("Add of an x509 client: %v", err)
	}
	if got := g.st.Tree().Leaf(1).Credential.CredentialType; got != mls.CredentialTypeX509 {
		t.Fatalf("carol's leaf has credential type %d", got)
	}

	// mallory, registered with a basic credential, holds a certificate of
	// the same CA for her key that names carol: her KeyPackage is refused.
	mallory := e.client("mallory")
	fake := ca.issue(t, "carol", mallory.sigPub, later)
	kpFake, _ := keyPackageWith(t, fake, mallory.sigPriv, mallory.sigPub, bothCredentials)
	connectErr(t, upload(mallory, kpFake), connect.CodePermissionDenied)
	// Nor can she register a client with it: carol is taken by another key.
	m2 := e.newMember("carol")
	m2.sigPriv, m2.sigPub, m2.cred = mallory.sigPriv, mallory.sigPub, fake
	_, err = m2.auth.RegisterClient(ctx, connect.NewRequest(m2.registerReq("")))
	connectErr(t, err, connect.CodePermissionDenied)

	register := func(id string, cred func(m *member) mls.Credential) error {
		m := e.newMember(id)
		m.cred = cred(m)
		_, err := m.auth.RegisterClient(ctx, connect.NewRequest(m.registerReq("")))
		return err
	}
	// Expired at the DS's now.
	err = register("erin", func(m *member) mls.Credential { return ca.issue(t, "erin", m.sigPub, time.Now().Add(-time.Hour)) })
	connectErr(t, err, connect.CodePermissionDenied)
	// Chained to a root the DS does not trust.
	other := newTestCA(t, "other CA")
	err = register("frank", func(m *member) mls.Credential { return other.issue(t, "frank", m.sigPub, later) })
	connectErr(t, err, connect.CodePermissionDenied)
	// Certifying another key than the registered one.
	_, stranger := newKeyPair(t)
	err = register("gina", func(m *member) mls.Credential { return ca.issue(t, "gina", stranger, later) })
	connectErr(t, err, connect.CodePermissionDenied)
	// Registering by KeyPackage works with x509 too.
	hank := e.newMember("hank")
	hank.cred = ca.issue(t, "hank", hank.sigPub, later)
	kpHank, _ := keyPackageWith(t, hank.cred, hank.sigPriv, hank.sigPub, bothCredentials)
	if _, err := hank.auth.RegisterClient(ctx, connect.NewRequest(&mlsdsv1.RegisterClientRequest{
		Credential: hank.credBytes(), SignatureKey: hank.sigPub, CipherSuite: uint32(suite), KeyPackage: kpHank})); err != nil {
		t.Fatalf("x509 registration by KeyPackage: %v", err)
	}

	// A server without --x509-roots refuses x509 credentials, saying how
	// to accept them.
	plain := startEnv(t)
	m := plain.newMember("ivy")
	m.cred = ca.issue(t, "ivy", m.sigPub, later)
	_, err = m.auth.RegisterClient(ctx, connect.NewRequest(m.registerReq("")))
	ce := connectErr(t, err, connect.CodePermissionDenied)
	if !strings.Contains(ce.Message(), "--x509-roots") {
		t.Errorf("refusal %q does not say how to accept x509 credentials", ce.Message())
	}
}
