package security

import (
	"context"
	"errors"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/internal/testkit"
	"github.com/mlsds/mlsds/mls"
)

// overStream sends msg as c over a SendStream of its own and returns the
// answer as an error: the SendError as the *connect.Error Send would have
// returned, or the stream's own error.
func overStream(w *world, c *testkit.Client, msg []byte) error {
	stream := c.Groups.SendStream(context.Background())
	defer stream.CloseResponse()
	if err := stream.Send(&mlsdsv1.SendStreamRequest{Message: msg}); err != nil {
		_, rerr := stream.Receive()
		return errors.Join(err, rerr)
	}
	res, err := stream.Receive()
	if err != nil {
		return err
	}
	se := res.GetError()
	if se == nil {
		return nil
	}
	var code connect.Code
	if err := code.UnmarshalText([]byte(se.Code)); err != nil {
		w.t.Fatalf("SendError code %q: %v", se.Code, err)
	}
	ce := connect.NewError(code, errors.New(se.Message))
	for _, a := range se.Details {
		m, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
		if err != nil {
			w.t.Fatalf("SendError detail %s: %v", a.TypeUrl, err)
		}
		d, err := connect.NewErrorDetail(m)
		if err != nil {
			w.t.Fatal(err)
		}
		ce.AddDetail(d)
	}
	return ce
}

// sendStreamAttacks are the table's cases over SendStream: each gets the
// answer Send gives, and nothing is stored.
func sendStreamAttacks() []attack {
	return []attack{
		{
			name: "stranger sends to a group over SendStream",
			do: func(w *world) error {
				err := overStream(w, w.eve, privateMessage(w.t, w.gid, 7))
				err2 := overStream(w, w.eve, privateMessage(w.t, ghost, 7))
				sameAnswer(w.t, "SendStream to a real vs a missing group", err, err2, w.gid, ghost)
				_, unary := w.eve.Groups.Send(bg, connect.NewRequest(&mlsdsv1.SendRequest{Message: privateMessage(w.t, w.gid, 7)}))
				sameAnswer(w.t, "SendStream vs Send to a group of others", err, unary, w.gid)
				return err
			},
			code: connect.CodePermissionDenied, detail: notMember,
		},
		{
			name: "member proposes over SendStream an Add of a KeyPackage naming bob with another key",
			do: func(w *world) error {
				kp, _ := forgedKeyPackage(w.t, "bob", nil)
				saved := w.clone(w.mallory.g)
				msg, _, err := w.mallory.g.ProposeMessage(&mls.Proposal{ProposalType: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kp}})
				if err != nil {
					w.t.Fatal(err)
				}
				w.mallory.g = saved
				return overStream(w, w.mallory.Client, testkit.Message(w.t, msg))
			},
			code: connect.CodePermissionDenied, msg: "bob",
		},
		{
			name: "member sends a Commit over SendStream (no GroupInfo)",
			do: func(w *world) error {
				pm, _, _, _ := w.commit(w.mallory, mls.CommitOptions{})
				return overStream(w, w.mallory.Client, testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm}))
			},
			code: connect.CodeInvalidArgument, msg: "GroupInfo",
		},
		{
			name: "SendStream without a session",
			do: func(w *world) error {
				anon := mlsdsv1connect.NewGroupServiceClient(testkit.H2C(), w.srv.URL)
				stream := anon.SendStream(context.Background())
				defer stream.CloseResponse()
				stream.Send(&mlsdsv1.SendStreamRequest{Message: privateMessage(w.t, w.gid, 0)})
				_, err := stream.Receive()
				return err
			},
			code: connect.CodeUnauthenticated,
		},
	}
}
