// Package resources holds an opt-in test of the server's memory bounds
// under clients that never read, against a real `mlsds serve` process.
package resources

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/internal/testkit"
	"github.com/mlsds/mlsds/mls"
)

const (
	attackers   = 50          // never-reading Subscribe streams, and as many never-read Fetches
	bigMessages = 40          // 1 MiB messages in the attackers' group
	bigSize     = 1<<20 - 256 // bytes of the body of each: a whole message of just under 1 MiB
	probes      = 300         // messages whose latency is measured, per phase
	rssLimit    = 512 << 20
)

// TestNeverReadingClients: 50 Subscribe streams and 50 Fetches (raw
// connections that send the request and never read) over a group holding
// 40 messages of 1 MiB, against `mlsds serve` with its default budgets.
// The server's resident memory stays under 512 MiB throughout, and two
// other clients keep exchanging messages with a p99 latency within twice
// that of a quiet run.
func TestNeverReadingClients(t *testing.T) {
	if os.Getenv("MLSDS_RESOURCE_TEST") != "1" {
		t.Skip("opt-in: set MLSDS_RESOURCE_TEST=1 to run (starts mlsds serve, stores 40 MiB of messages, holds 100 never-reading connections; about a minute)")
	}
	srv := testkit.StartServe(t, "--rate-limit", "-1", "--auth-rate-limit", "-1", "--registrations-per-hour", "0",
		"--log-level", "info")
	rss := startRSSSampler(t, srv.Pid())

	join := func(id string) *testkit.Client {
		c := testkit.NewClient(t, srv.URL, id).MustJoin()
		c.Upload(2)
		return c
	}
	owner := join("owner")
	var bad []*testkit.Client
	for i := range attackers {
		bad = append(bad, join(fmt.Sprintf("attacker%d", i)))
	}
	sender, receiver := join("sender"), join("receiver")
	attackGroup := createOpaque(t, owner, "attack", bad...)
	probeGroup := createOpaque(t, sender, "probe", receiver)
	for range bigMessages {
		send(t, owner, privateMessage(t, attackGroup, bigSize))
	}
	t.Logf("stored %d messages of %d bytes; server RSS %d MiB", bigMessages, bigSize, rss.max()>>20)

	// The receiver reads its stream and notes when each probe arrives.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	arrived := make(chan time.Time, probes)
	stream, err := receiver.Delivery.Subscribe(ctx, connect.NewRequest(&mlsdsv1.SubscribeRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	caughtUp := make(chan struct{})
	go func() {
		for stream.Receive() {
			ev := stream.Msg()
			if ev.GetCaughtUp() != nil {
				close(caughtUp)
			}
			if m := ev.GetMessage(); m != nil {
				arrived <- time.Now()
				receiver.Groups.Ack(ctx, connect.NewRequest(&mlsdsv1.AckRequest{Cursors: []*mlsdsv1.Cursor{{GroupId: m.GroupId, Seq: m.GroupSeq}}}))
			}
		}
	}()
	<-caughtUp
	probe := func(phase string) time.Duration {
		var lat []time.Duration
		for range probes {
			start := time.Now()
			send(t, sender, privateMessage(t, probeGroup, 512))
			select {
			case at := <-arrived:
				lat = append(lat, at.Sub(start))
			case <-time.After(60 * time.Second):
				t.Fatalf("%s: a probe did not arrive within 60s", phase)
			}
			time.Sleep(10 * time.Millisecond)
		}
		slices.Sort(lat)
		return lat[len(lat)*99/100]
	}
	quiet := probe("quiet")

	// The attack: every attacker opens Subscribe and sends a Fetch of the
	// whole group, each on a raw HTTP/1.1 connection that never reads.
	for _, c := range bad {
		subscribeRaw(t, srv.URL, c)
		body, err := proto.Marshal(&mlsdsv1.FetchRequest{GroupId: attackGroup, FromSeq: 1, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		rawRequest(t, srv.URL, c, "/mlsds.v1.GroupService/Fetch", "application/proto", body)
	}
	time.Sleep(2 * time.Second) // let the server fill what it will fill (not a timing assertion)
	loaded := probe("under attack")
	maxRSS := rss.max()
	t.Logf("send->receive p99: quiet %v, with %d stalled streams and %d stalled Fetches %v; server max RSS %d MiB",
		quiet, attackers, attackers, loaded, maxRSS>>20)
	if maxRSS >= rssLimit {
		t.Errorf("the server's RSS reached %d MiB, over %d MiB", maxRSS>>20, rssLimit>>20)
	}
	if loaded > 2*quiet {
		t.Errorf("p99 latency under attack %v, more than twice the quiet %v", loaded, quiet)
	}
}

// rssSampler reads the server's VmRSS every 50ms.
type rssSampler struct {
	mu   sync.Mutex
	peak int64
}

func startRSSSampler(t *testing.T, pid int) *rssSampler {
	s := &rssSampler{}
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if n, err := vmRSS(pid); err == nil {
				s.mu.Lock()
				s.peak = max(s.peak, n)
				s.mu.Unlock()
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

func (s *rssSampler) max() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

func vmRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

func createOpaque(t *testing.T, creator *testkit.Client, name string, others ...*testkit.Client) []byte {
	t.Helper()
	gid := append([]byte(name+"-"), testkit.RandBytes(4)...)
	req := &mlsdsv1.CreateGroupRequest{GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE}
	for _, o := range others {
		req.Members = append(req.Members, o.ID)
		res, err := creator.KPs.ClaimKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
			Target: &mlsdsv1.ClaimKeyPackagesRequest_ClientId{ClientId: o.ID}, CipherSuite: uint32(testkit.Suite)}))
		if err != nil || len(res.Msg.KeyPackages) != 1 {
			t.Fatalf("claim %s: %v", o.ID, err)
		}
		req.KeyPackages = append(req.KeyPackages, res.Msg.KeyPackages[0].KeyPackage)
	}
	if _, err := creator.Groups.CreateGroup(context.Background(), connect.NewRequest(req)); err != nil {
		t.Fatalf("CreateGroup %s: %v", name, err)
	}
	return gid
}

func privateMessage(t *testing.T, gid []byte, body int) []byte {
	return testkit.Message(t, &mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: &mls.PrivateMessage{
		GroupID: gid, Epoch: 0, ContentType: mls.ContentTypeApplication, EncryptedSenderData: testkit.RandBytes(32), Ciphertext: testkit.RandBytes(body),
	}})
}

func send(t *testing.T, c *testkit.Client, msg []byte) {
	t.Helper()
	if _, err := c.Groups.Send(context.Background(), connect.NewRequest(&mlsdsv1.SendRequest{Message: msg})); err != nil {
		t.Fatalf("Send(%s): %v", c.ID, err)
	}
}

// dialStalled connects with the smallest receive buffer the kernel allows.
func dialStalled(t *testing.T, serverURL string) net.Conn {
	t.Helper()
	u, err := url.Parse(serverURL)
	if err != nil {
		t.Fatal(err)
	}
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// rawRequest sends a POST over a new connection and never reads.
func rawRequest(t *testing.T, serverURL string, c *testkit.Client, procedure, contentType string, body []byte) {
	t.Helper()
	conn := dialStalled(t, serverURL)
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: mlsds\r\nContent-Type: %s\r\nConnect-Protocol-Version: 1\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n",
		procedure, contentType, c.Token, len(body))
	if _, err := conn.Write(append([]byte(head), body...)); err != nil {
		t.Fatal(err)
	}
}

// subscribeRaw opens Subscribe (Connect streaming over HTTP/1.1) and never
// reads.
func subscribeRaw(t *testing.T, serverURL string, c *testkit.Client) {
	env := make([]byte, 5) // flags 0, an empty SubscribeRequest
	binary.BigEndian.PutUint32(env[1:], 0)
	rawRequest(t, serverURL, c, "/mlsds.v1.DeliveryService/Subscribe", "application/connect+proto", env)
}
