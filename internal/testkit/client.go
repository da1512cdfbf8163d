package testkit

import (
	"context"
	"crypto/rand"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/mls"
)

// Suite is the cipher suite raw clients use.
const Suite = mls.CipherSuite(1) // MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519

// H2C is an HTTP client speaking HTTP/2 without TLS, as a Connect client
// of an h2c server does.
func H2C() *http.Client {
	tr := &http.Transport{ForceAttemptHTTP2: true}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr}
}

// Client is a raw API client: a client id, a signature key pair and the
// generated service clients, with its session token once logged in.
type Client struct {
	tb      testing.TB
	ID      string
	User    string
	SigPriv []byte
	SigPub  []byte
	Cred    mls.Credential
	Token   string

	Auth     mlsdsv1connect.AuthServiceClient
	KPs      mlsdsv1connect.KeyPackageServiceClient
	Groups   mlsdsv1connect.GroupServiceClient
	Delivery mlsdsv1connect.DeliveryServiceClient
	Account  mlsdsv1connect.AccountServiceClient
}

type bearer struct{ token *string }

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if *b.token != "" {
			req.Header().Set("Authorization", "Bearer "+*b.token)
		}
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if *b.token != "" {
			conn.RequestHeader().Set("Authorization", "Bearer "+*b.token)
		}
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// NewClient makes a client with a fresh key pair; it is not registered.
func NewClient(tb testing.TB, url, id string) *Client {
	tb.Helper()
	priv, pub, err := Suite.GenerateSignatureKeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	c := &Client{tb: tb, ID: id, SigPriv: priv, SigPub: pub,
		Cred: mls.Credential{CredentialType: mls.CredentialTypeBasic, Identity: []byte(id)}}
	h := H2C()
	opt := connect.WithInterceptors(bearer{&c.Token})
	c.Auth = mlsdsv1connect.NewAuthServiceClient(h, url, opt)
	c.KPs = mlsdsv1connect.NewKeyPackageServiceClient(h, url, opt)
	c.Groups = mlsdsv1connect.NewGroupServiceClient(h, url, opt)
	c.Delivery = mlsdsv1connect.NewDeliveryServiceClient(h, url, opt)
	c.Account = mlsdsv1connect.NewAccountServiceClient(h, url, opt)
	return c
}

// CredBytes is the TLS encoding of the client's credential.
func (c *Client) CredBytes() []byte {
	b, err := c.Cred.MarshalBinary()
	if err != nil {
		c.tb.Fatal(err)
	}
	return b
}

// RegisterRequest is a complete RegisterClient request for user (empty:
// the client is its own user) with a device link (may be empty).
func (c *Client) RegisterRequest(user, deviceLink string) *mlsdsv1.RegisterClientRequest {
	req := &mlsdsv1.RegisterClientRequest{Credential: c.CredBytes(), SignatureKey: c.SigPub, CipherSuite: uint32(Suite), UserId: user, DeviceLink: deviceLink}
	proof, err := registerProof(c.SigPriv, req)
	if err != nil {
		c.tb.Fatal(err)
	}
	req.Proof = proof
	return req
}

// Register registers the client.
func (c *Client) Register(user, deviceLink string) error {
	res, err := c.Auth.RegisterClient(context.Background(), connect.NewRequest(c.RegisterRequest(user, deviceLink)))
	if err != nil {
		return err
	}
	c.User = res.Msg.UserId
	return nil
}

// Login runs the challenge-response and keeps the session token.
func (c *Client) Login() error {
	ctx := context.Background()
	ch, err := c.Auth.GetChallenge(ctx, connect.NewRequest(&mlsdsv1.GetChallengeRequest{ClientId: c.ID}))
	if err != nil {
		return err
	}
	sig, err := Suite.SignWithLabel(c.SigPriv, ch.Msg.Label, ch.Msg.Challenge)
	if err != nil {
		return err
	}
	res, err := c.Auth.Authenticate(ctx, connect.NewRequest(&mlsdsv1.AuthenticateRequest{ClientId: c.ID, Challenge: ch.Msg.Challenge, Signature: sig}))
	if err != nil {
		return err
	}
	c.Token = res.Msg.SessionToken
	return nil
}

// MustJoin registers (as its own user) and logs in, or fails the test.
func (c *Client) MustJoin() *Client {
	c.tb.Helper()
	if err := c.Register("", ""); err != nil {
		c.tb.Fatalf("register %s: %v", c.ID, err)
	}
	if err := c.Login(); err != nil {
		c.tb.Fatalf("login %s: %v", c.ID, err)
	}
	return c
}

// KeyPackage makes a fresh KeyPackage of the client with its registered
// key, valid for a week.
func (c *Client) KeyPackage() (*mls.KeyPackage, *mls.KeyPackagePrivate) {
	c.tb.Helper()
	now := uint64(time.Now().Unix())
	kp, priv, err := mls.NewKeyPackage(Suite, []byte(c.ID), c.SigPriv, now-3600, now+7*24*3600)
	if err != nil {
		c.tb.Fatal(err)
	}
	return kp, priv
}

// Message encodes an MLSMessage.
func Message(tb testing.TB, m *mls.MLSMessage) []byte {
	tb.Helper()
	m.Version = mls.ProtocolVersionMLS10
	b, err := m.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// Upload publishes KeyPackages and returns them with their private keys.
func (c *Client) Upload(n int) ([]*mls.KeyPackage, []*mls.KeyPackagePrivate) {
	c.tb.Helper()
	req := &mlsdsv1.UploadKeyPackagesRequest{}
	var kps []*mls.KeyPackage
	var privs []*mls.KeyPackagePrivate
	for range n {
		kp, priv := c.KeyPackage()
		kps, privs = append(kps, kp), append(privs, priv)
		req.KeyPackages = append(req.KeyPackages, &mlsdsv1.KeyPackageUpload{KeyPackage: Message(c.tb, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp})})
	}
	if _, err := c.KPs.UploadKeyPackages(context.Background(), connect.NewRequest(req)); err != nil {
		c.tb.Fatalf("UploadKeyPackages(%s): %v", c.ID, err)
	}
	return kps, privs
}

// RandBytes returns n random bytes.
func RandBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}
