package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// What a client does on its own after it processed a group's messages:
// rejoin a transparent group whose Commit it could not process, commit
// the pending proposals or the removal of members who are gone, finish a
// Leave that was interrupted.

// maxAutoRejoins bounds the automatic rejoins of a group that fail in a
// row (each one up to maxAttempts resync Commits): after that the group
// stays broken until Group.Rejoin or a Welcome.
const maxAutoRejoins = 3

// afterProcessing runs what is due once the group's processed messages are
// written.
func (g *Group) afterProcessing(ctx context.Context) {
	g.maybeCheckFork(ctx) // fork.go
	g.maybeRecover(ctx)
	g.maybeAutoCommit(ctx)
	g.removeStale(ctx)
	g.maybeLeave(ctx)
	g.maybeCreateSuccessor(ctx) // reinit.go
	// Should the designated committer not commit the pending proposals,
	// this client's turn comes (guard.go).
	g.mu.Lock()
	g.scheduleTakeoverLocked()
	g.mu.Unlock()
}

// maybeRecover rejoins a group this client could not follow (a Commit
// that the server accepted did not process: a bad confirmation tag, a bad
// path, anything mls refuses, or, in an opaque group, a roster declaration
// that lies) with a resync external Commit, and reports it with
// EventRejoined: a transparent group from the server's GroupInfo, an
// opaque one from a remote tree or its own state (opaque_recovery.go).
// When several members do so at once they race for the epoch: a loser
// makes its Commit again from the newer GroupInfo (Group.rejoin). A group
// broken by a refused Commit (the credential check) is not rejoined: its
// tree holds the leaf this client refused. A client the server dropped
// from an opaque group tries again until it is restored.
func (g *Group) maybeRecover(ctx context.Context) {
	g.mu.Lock()
	due := g.broken && !g.refused && !g.removed && !g.closed && !g.leaving && (g.rejoinFailures < maxAutoRejoins || g.rec.dropped)
	opaque := g.opaque
	reason := g.brokenErr
	g.mu.Unlock()
	if !due {
		return
	}
	if reason == nil {
		reason = errors.New("client: this client could not follow the group")
	}
	var err error
	if opaque {
		err = g.recoverOpaque(ctx, reason)
	} else {
		err = g.rejoinWith(ctx, reason)
	}
	if err == nil || errors.Is(err, ErrDropped) {
		return
	}
	g.mu.Lock()
	g.rejoinFailures++
	n := g.rejoinFailures
	g.mu.Unlock()
	if ctx.Err() == nil {
		g.c.log.Warn("rejoining a group this client could not follow failed", slog.String("group", fmt.Sprintf("%x", g.id)),
			slog.Int("failures", n), slog.String("error", err.Error()))
	}
}

// removeStale commits, after a Commit, the removal of the clients that the
// tree still holds although they are gone: their Remove proposal was made
// in an epoch that ended without it (removalsDue), or the server no
// longer lists them on the group's roster (they left: GetRoster lists
// open memberships only). The designated committer is the member with the
// lowest leaf index that is not gone; the first two members in that order
// ask the server for the roster (the first may be gone itself). The roster
// counts in transparent groups only, where the server keeps it from the
// Commits it verifies; an opaque group's is what committers declare.
func (g *Group) removeStale(ctx context.Context) {
	g.mu.Lock()
	if !g.commitSeen || g.removed || g.broken || g.closed || g.leaving || g.pending != nil || g.frozenLocked() {
		g.mu.Unlock()
		return
	}
	g.commitSeen = false
	members := g.st.Members()
	self := g.st.Self()
	opaque := g.opaque
	stale := map[string]bool{}
	for id := range g.removalsDue {
		stale[id] = true
	}
	g.mu.Unlock()
	var order []mls.Member
	for _, m := range members {
		if !stale[string(m.Identity)] || m.Leaf == self {
			order = append(order, m)
		}
	}
	pos := slices.IndexFunc(order, func(m mls.Member) bool { return m.Leaf == self })
	if pos < 0 || pos > 1 || len(members) < 2 || opaque && (pos != 0 || len(stale) == 0) {
		return
	}
	var res *connect.Response[mlsdsv1.GetRosterResponse]
	var err error
	if opaque {
		err = errors.New("an opaque group's roster is not checked")
	} else {
		res, err = g.c.rpc.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: g.id}))
	}
	if err != nil {
		g.c.log.Debug("reading the roster failed", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
		if pos != 0 {
			return
		}
	} else {
		for _, m := range members {
			if m.Leaf != self && !slices.Contains(res.Msg.ClientIds, string(m.Identity)) {
				stale[string(m.Identity)] = true
			}
		}
	}
	delete(stale, g.c.id)
	if len(stale) == 0 {
		return
	}
	i := slices.IndexFunc(order, func(m mls.Member) bool { return !stale[string(m.Identity)] })
	if i < 0 || order[i].Leaf != self {
		return
	}
	var ids []string
	for id := range stale {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	g.c.log.Debug("removing members who are gone", slog.String("group", fmt.Sprintf("%x", g.id)), slog.Any("clients", ids))
	if err := g.commit(ctx, intent{removes: ids}); err != nil && !errors.Is(err, ErrRemoved) && !errors.Is(err, ErrClosed) && ctx.Err() == nil {
		g.c.log.Warn("removing members who are gone failed", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
	}
}

// beginJoin marks an external join of group id in flight, during which the
// group's messages may arrive before its Group exists; the function it
// returns ends the mark.
func (c *Client) beginJoin(id []byte) func() {
	c.mu.Lock()
	if c.joining == nil {
		c.joining = map[string]int{}
	}
	c.joining[string(id)]++
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		if c.joining[string(id)]--; c.joining[string(id)] <= 0 {
			delete(c.joining, string(id))
		}
		c.mu.Unlock()
	}
}

// leaveUnknown leaves, on the server, a group this client holds no state of
// (it dropped the group, lost its state, or refused its Welcome) but is
// still delivered, instead of downloading it again: the server stops
// delivering it, and the members' clients commit the removal of this
// client's leaf. proposal, if not nil, is this client's Remove proposal
// (a refused Welcome still gives the state to make one). It runs in the
// background, once per group for the life of the Client.
func (c *Client) leaveUnknown(groupID, proposal []byte) {
	if c.holds(groupID) {
		return
	}
	c.mu.Lock()
	if c.closed || c.joining[string(groupID)] > 0 || c.leftUnknown[string(groupID)] {
		c.mu.Unlock()
		return
	}
	if c.leftUnknown == nil {
		c.leftUnknown = map[string]bool{}
	}
	c.leftUnknown[string(groupID)] = true
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		var err error
		for attempt := 0; attempt < maxAttempts; attempt++ {
			if attempt > 0 {
				if sleep(c.ctx, retryAfter(err, attempt)) != nil {
					return
				}
			}
			c.mu.Lock()
			skip := c.joining[string(groupID)] > 0
			c.mu.Unlock()
			if skip || c.holds(groupID) {
				return
			}
			_, err = c.rpc.groups.LeaveGroup(c.ctx, connect.NewRequest(&mlsdsv1.LeaveGroupRequest{GroupId: groupID, RemoveProposal: proposal}))
			if err != nil && proposal != nil && !transient(err) && errorDetail[*mlsdsv1.NotMember](err) == nil {
				// The proposal is stale (the group moved on): leave without.
				proposal = nil
				continue
			}
			if err == nil || !transient(err) {
				break
			}
		}
		if err != nil && c.ctx.Err() == nil {
			c.log.Debug("leaving a group without state failed", slog.String("group", fmt.Sprintf("%x", groupID)), slog.String("error", err.Error()))
			return
		}
		c.log.Info("left a group this client holds no state of", slog.String("group", fmt.Sprintf("%x", groupID)))
	}()
}

// holds reports whether the client holds a state of group id in which it
// is a member (possibly broken).
func (c *Client) holds(id []byte) bool {
	g := c.group(id)
	return g != nil && !g.isRemoved()
}
