package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/internal/loadgen"
)

// BenchmarkTransportFloor measures what the transport alone costs the
// server per message, in the shapes of BenchmarkServerCPU's groups of 2
// with one sender each: senders, each on its own connection, send 246-byte
// messages on a SendStream and wait for each answer, and each message goes
// out on the Subscribe stream of the sender's receiver (50 such streams to
// a connection, as the bench's raw receivers share theirs). The server is
// a child process that speaks the same API over the same stack (net/http
// h2c, Connect, protobuf) and does nothing else: no authentication, no
// store, no MLS, no bookkeeping. Its CPU per message is a floor under
// BenchmarkServerCPU's server-µs/msg that no work in ds or the stores can
// go below. (With many receivers per message it is no floor: the real
// server marshals a message once for all its streams and lets the frames
// of events that are ready share a write.)
//
//	go test ./cmd/mlsds -run '^$' -bench TransportFloor -benchtime 100000x
func BenchmarkTransportFloor(b *testing.B) {
	for _, senders := range []int{50, 5} {
		b.Run(fmt.Sprintf("senders=%d", senders), func(b *testing.B) {
			b.ReportMetric(transportFloor(b, senders), "server-µs/msg")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// transportFloor runs b.N messages (at least one per sender) through a
// floor server and returns its CPU µs per message.
func transportFloor(b *testing.B, senders int) float64 {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestTransportFloorChild$")
	cmd.Env = append(os.Environ(), floorChildEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	sc := bufio.NewScanner(out)
	var addr string
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "floor listening on "); ok {
			addr = a
			break
		}
	}
	if addr == "" {
		b.Fatal("the floor server did not start")
	}
	go func() {
		for sc.Scan() {
		}
	}()
	url := "http://" + addr

	h2c := func() *http.Client {
		tr := &http.Transport{}
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
		return &http.Client{Transport: tr}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msg := make([]byte, 246)
	per := max(1, (b.N+senders-1)/senders)
	var sends []*connect.BidiStreamForClient[mlsdsv1.SendStreamRequest, mlsdsv1.SendStreamResponse]
	var subs []*connect.ServerStreamForClient[mlsdsv1.SubscribeResponse]
	var shared *http.Client
	for i := range senders {
		id := strconv.Itoa(i)
		if i%50 == 0 {
			shared = h2c()
		}
		sub, err := mlsdsv1connect.NewDeliveryServiceClient(shared, url).Subscribe(ctx,
			withPair(connect.NewRequest(&mlsdsv1.SubscribeRequest{}), id))
		if err != nil {
			b.Fatal(err)
		}
		// The first event says the stream is open on the server.
		if !sub.Receive() {
			b.Fatalf("subscribe: %v", sub.Err())
		}
		subs = append(subs, sub)
		st := mlsdsv1connect.NewGroupServiceClient(h2c(), url).SendStream(ctx)
		st.RequestHeader().Set("X-Pair", id)
		sends = append(sends, st)
	}

	cpu0, ok := loadgen.ProcessCPU(cmd.Process.Pid)
	if !ok {
		b.Fatal("cannot read the floor server's CPU time from /proc")
	}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, len(sends)+len(subs))
	for _, st := range sends {
		wg.Go(func() {
			for range per {
				if err := st.Send(&mlsdsv1.SendStreamRequest{Message: msg}); err != nil {
					errs <- err
					return
				}
				if _, err := st.Receive(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for _, sub := range subs {
		wg.Go(func() {
			for range per {
				if !sub.Receive() {
					errs <- fmt.Errorf("subscribe: %v", sub.Err())
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	cpu1, ok := loadgen.ProcessCPU(cmd.Process.Pid)
	if !ok {
		b.Fatal("cannot read the floor server's CPU time from /proc")
	}
	n := float64(per * senders)
	b.ReportMetric(n/elapsed.Seconds(), "msgs/s")
	return (cpu1 - cpu0).Seconds() * 1e6 / n
}

const floorChildEnv = "MLSDS_TEST_TRANSPORT_FLOOR_CHILD"

// TestTransportFloorChild is the server of BenchmarkTransportFloor.
func TestTransportFloorChild(t *testing.T) {
	if os.Getenv(floorChildEnv) != "1" {
		t.Skip("runs only as the server child of BenchmarkTransportFloor")
	}
	f := &floorServer{pairs: map[string]chan []byte{}}
	mux := http.NewServeMux()
	mux.Handle(mlsdsv1connect.NewGroupServiceHandler(floorGroups{floorServer: f}))
	mux.Handle(mlsdsv1connect.NewDeliveryServiceHandler(floorDelivery{floorServer: f}))
	hs := &http.Server{Handler: mux, Protocols: new(http.Protocols)}
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("floor listening on %s\n", ln.Addr())
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		t.Fatal(err)
	}
}

// floorServer pairs a SendStream with a Subscribe stream by their X-Pair
// header: what one receives, the other sends.
type floorServer struct {
	mu    sync.Mutex
	pairs map[string]chan []byte
}

func (f *floorServer) pair(id string) chan []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.pairs[id]
	if c == nil {
		c = make(chan []byte, 64)
		f.pairs[id] = c
	}
	return c
}

type floorGroups struct {
	mlsdsv1connect.UnimplementedGroupServiceHandler
	*floorServer
}

type floorDelivery struct {
	mlsdsv1connect.UnimplementedDeliveryServiceHandler
	*floorServer
}

func (f floorGroups) SendStream(ctx context.Context, st *connect.BidiStream[mlsdsv1.SendStreamRequest, mlsdsv1.SendStreamResponse]) error {
	out := f.pair(st.RequestHeader().Get("X-Pair"))
	gid := []byte("group-0123456789abcdef")
	for seq := uint64(1); ; seq++ {
		req, err := st.Receive()
		if err != nil {
			return nil
		}
		out <- req.Message
		if err := st.Send(&mlsdsv1.SendStreamResponse{Result: &mlsdsv1.SendStreamResponse_Receipt{Receipt: &mlsdsv1.Receipt{
			GroupId: gid, GroupSeq: seq, Epoch: 1, AcceptedAt: timestamppb.Now()}}}); err != nil {
			return err
		}
	}
}

func (f floorDelivery) Subscribe(ctx context.Context, req *connect.Request[mlsdsv1.SubscribeRequest], st *connect.ServerStream[mlsdsv1.SubscribeResponse]) error {
	in := f.pair(req.Header().Get("X-Pair"))
	if err := st.Send(&mlsdsv1.SubscribeResponse{Event: &mlsdsv1.SubscribeResponse_CaughtUp{CaughtUp: &mlsdsv1.CaughtUpEvent{}}}); err != nil {
		return err
	}
	gid := []byte("group-0123456789abcdef")
	for seq := uint64(1); ; seq++ {
		select {
		case <-ctx.Done():
			return nil
		case m := <-in:
			if err := st.Send(&mlsdsv1.SubscribeResponse{Event: &mlsdsv1.SubscribeResponse_Message{Message: &mlsdsv1.Envelope{
				GroupId: gid, GroupSeq: seq, Epoch: 1, SenderClientId: "sender", ContentType: mlsdsv1.ContentType_CONTENT_TYPE_APPLICATION,
				Message: m, AcceptedAt: timestamppb.Now()}}}); err != nil {
				return err
			}
		}
	}
}

func withPair[T any](r *connect.Request[T], id string) *connect.Request[T] {
	r.Header().Set("X-Pair", id)
	return r
}
