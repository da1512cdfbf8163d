package server_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/postgres"
	"github.com/mlsds/mlsds/internal/pgtest"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// TestMultiNode runs two stateless servers over one PostgreSQL database,
// as behind a load balancer: a session token from one node works on the
// other (shared secret), a message accepted by one node reaches a stream
// held by the other (LISTEN/NOTIFY; polling is set too slow to matter),
// and Commits raced through both nodes still get exactly one per epoch.
func TestMultiNode(t *testing.T) {
	url := pgtest.NewDatabase(t)
	secret := bytes.Repeat([]byte{0x42}, 32)
	node := func() *testEnv {
		st, err := postgres.Open(context.Background(), url, postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return startEnvOn(t, st, func(c *ds.Config, s *server.Config) {
			c.PollInterval = time.Hour
			s.AuthSecret = secret
		})
	}
	a, b := node(), node()

	alice := a.client("alice")
	bob := b.client("bob")
	aliceOnB := b.rebind(alice) // same keys and token, other node
	aliceOnB.count()

	gid := groupID("multinode")
	alice.createOpaqueGroup(gid, bob)
	sub := bob.subscribe() // on node b
	sub.waitCaughtUp(t)
	m := privateMessage(t, gid, 0, mls.ContentTypeApplication, 50)
	r := alice.mustSend(m) // through node a
	ev := sub.nextData(t).GetMessage()
	if ev == nil || !bytes.Equal(ev.Message, m) || ev.GroupSeq != r.GroupSeq {
		t.Fatalf("bob on node b got %v", ev)
	}

	// Ten members race a Commit for epoch 1 through alternating nodes.
	const n = 10
	ms := make([]*member, n)
	for i := range ms {
		env := a
		if i%2 == 1 {
			env = b
		}
		ms[i] = env.client(fmt.Sprintf("racer%d", i))
	}
	gid2 := groupID("multinode-race")
	ms[0].createOpaqueGroup(gid2, ms[1:]...)
	var wg sync.WaitGroup
	var mu sync.Mutex
	accepted, lost := 0, 0
	start := make(chan struct{})
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := m.send(privateMessage(t, gid2, 0, mls.ContentTypeCommit, 40))
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				accepted++
				return
			}
			if ce, ok := err.(*connect.Error); ok && ce.Code() == connect.CodeAborted {
				lost++
				return
			}
			t.Errorf("%s: %v", m.id, err)
		}()
	}
	close(start)
	wg.Wait()
	if accepted != 1 || lost != n-1 {
		t.Fatalf("%d accepted, %d wrong_epoch; want 1 and %d", accepted, lost, n-1)
	}
	info, err := ms[1].groups.GetGroupInfo(context.Background(), connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid2}))
	if err != nil || info.Msg.Epoch != 1 {
		t.Fatalf("epoch after the race: %v %v", info, err)
	}
}
