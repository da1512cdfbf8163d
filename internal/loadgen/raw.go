package loadgen

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/client"
	"github.com/mlsds/mlsds/mls"
)

// rawMember is a registered client that publishes KeyPackages, is added
// to a group like any other, and then only counts what its Subscribe
// stream brings: it never decrypts, so it costs the bench little CPU and
// the figures show what the server does rather than what the bench's
// own MLS processing allows. By default it acknowledges what it received
// as often as the SDK does.
type rawMember struct {
	id     string
	priv   []byte
	token  string
	groups mlsdsv1connect.GroupServiceClient
	deliv  mlsdsv1connect.DeliveryServiceClient
	kps    mlsdsv1connect.KeyPackageServiceClient

	caughtUp chan struct{} // closed at the first caught_up event
	joined   chan struct{} // closed at the Welcome of its group
	acked    atomic.Uint64
	seen     atomic.Uint64 // highest GroupSeq received
}

const (
	benchSuite = mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	// DefaultAckInterval is how often a raw member acknowledges what it
	// received by default: as often as the SDK does.
	DefaultAckInterval = 200 * time.Millisecond
)

// bearer adds a raw member's session token to every call.
type bearer struct{ token *string }

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+*b.token)
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", "Bearer "+*b.token)
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// newRawMember registers id with a fresh Ed25519 key, logs in and
// publishes kps KeyPackages.
func newRawMember(ctx context.Context, hc *http.Client, url, id string, kps int) (*rawMember, error) {
	priv, pub, err := benchSuite.GenerateSignatureKeyPair()
	if err != nil {
		return nil, err
	}
	cred := mls.Credential{CredentialType: mls.CredentialTypeBasic, Identity: []byte(id)}
	cb, err := cred.MarshalBinary()
	if err != nil {
		return nil, err
	}
	auth := mlsdsv1connect.NewAuthServiceClient(hc, url)
	reg := &mlsdsv1.RegisterClientRequest{Credential: cb, SignatureKey: pub, CipherSuite: uint32(benchSuite)}
	if err := client.SignRegistration(priv, reg); err != nil {
		return nil, err
	}
	if _, err := auth.RegisterClient(ctx, connect.NewRequest(reg)); err != nil {
		return nil, fmt.Errorf("registering %s: %w", id, err)
	}
	ch, err := auth.GetChallenge(ctx, connect.NewRequest(&mlsdsv1.GetChallengeRequest{ClientId: id}))
	if err != nil {
		return nil, fmt.Errorf("logging in %s: %w", id, err)
	}
	label := ch.Msg.Label
	if label == "" {
		label = "mlsds auth"
	}
	sig, err := benchSuite.SignWithLabel(priv, label, ch.Msg.Challenge)
	if err != nil {
		return nil, err
	}
	res, err := auth.Authenticate(ctx, connect.NewRequest(&mlsdsv1.AuthenticateRequest{
		ClientId: id, Challenge: ch.Msg.Challenge, Signature: sig}))
	if err != nil {
		return nil, fmt.Errorf("logging in %s: %w", id, err)
	}
	m := &rawMember{id: id, priv: priv, token: res.Msg.SessionToken,
		caughtUp: make(chan struct{}), joined: make(chan struct{})}
	opts := connect.WithInterceptors(bearer{&m.token})
	m.groups = mlsdsv1connect.NewGroupServiceClient(hc, url, opts)
	m.deliv = mlsdsv1connect.NewDeliveryServiceClient(hc, url, opts)
	m.kps = mlsdsv1connect.NewKeyPackageServiceClient(hc, url, opts)
	now := uint64(time.Now().Unix())
	req := &mlsdsv1.UploadKeyPackagesRequest{}
	for range kps {
		kp, _, err := mls.NewKeyPackage(benchSuite, []byte(id), priv, now-3600, now+30*24*3600)
		if err != nil {
			return nil, err
		}
		data, err := (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp}).MarshalBinary()
		if err != nil {
			return nil, err
		}
		req.KeyPackages = append(req.KeyPackages, &mlsdsv1.KeyPackageUpload{KeyPackage: data})
	}
	if _, err := m.kps.UploadKeyPackages(ctx, connect.NewRequest(req)); err != nil {
		return nil, fmt.Errorf("publishing KeyPackages of %s: %w", id, err)
	}
	return m, nil
}

// follow reads the member's stream until ctx ends, reconnecting if it
// breaks, and hands every application message of its group to onApp.
// It acknowledges what it received every ackEvery (never if it is
// negative).
func (m *rawMember) follow(ctx context.Context, groupID []byte, ackEvery time.Duration, onApp func(seq uint64, at time.Time), onErr func(error)) {
	if ackEvery > 0 {
		go m.ackLoop(ctx, groupID, ackEvery)
	}
	for ctx.Err() == nil {
		stream, err := m.deliv.Subscribe(ctx, connect.NewRequest(&mlsdsv1.SubscribeRequest{}))
		if err != nil {
			if ctx.Err() == nil {
				onErr(err)
				sleepCtx(ctx, 100*time.Millisecond)
			}
			continue
		}
		for stream.Receive() {
			ev := stream.Msg()
			switch {
			case ev.GetMessage() != nil:
				env := ev.GetMessage()
				at := time.Now()
				if env.GroupSeq > m.seen.Load() {
					m.seen.Store(env.GroupSeq)
				}
				if env.ContentType == mlsdsv1.ContentType_CONTENT_TYPE_APPLICATION {
					onApp(env.GroupSeq, at)
				}
			case ev.GetWelcome() != nil:
				w := ev.GetWelcome()
				if w.CommitSeq > m.seen.Load() {
					m.seen.Store(w.CommitSeq)
				}
				select {
				case <-m.joined:
				default:
					close(m.joined)
				}
			case ev.GetCaughtUp() != nil:
				select {
				case <-m.caughtUp:
				default:
					close(m.caughtUp)
				}
			}
		}
		err = stream.Err()
		stream.Close()
		if ctx.Err() == nil {
			onErr(fmt.Errorf("%s: the Subscribe stream ended: %v", m.id, err))
			sleepCtx(ctx, 100*time.Millisecond)
		}
	}
}

func (m *rawMember) ackLoop(ctx context.Context, groupID []byte, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		seq := m.seen.Load()
		if seq == 0 || seq == m.acked.Load() {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := m.groups.Ack(actx, connect.NewRequest(&mlsdsv1.AckRequest{Cursors: []*mlsdsv1.Cursor{{GroupId: groupID, Seq: seq}}}))
		cancel()
		if err == nil {
			m.acked.Store(seq)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
