package client

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/mls"
)

// Forks after a Commit. After processing another member's Commit, the
// client compares its tree hash and confirmed transcript hash with those
// of the GroupInfo the Delivery Service holds of that epoch: in a
// transparent group the one the Service checked against the Commit it
// accepted (GetGroupInfo), in an opaque one the GroupInfo of the epoch's
// remote tree (GetRemoteTree), if one opens with the epoch's key. The
// Service answers for the current epoch only, so the check runs when the
// Commit is the newest one the client knows of (after the messages at
// hand are processed, and the group is still at that epoch on the server),
// and at most once per epoch. On a mismatch the client reports
// EventForked (Err wraps ErrForked), drops its state of the group and
// rejoins it by a resync external Commit (EventRejoined), as it does for
// a Commit it cannot process. Joins are checked in guard.go
// (checkJoinedFork).

// maybeCheckFork runs the fork check if another member's Commit was
// processed since the last one.
func (g *Group) maybeCheckFork(ctx context.Context) {
	g.mu.Lock()
	due := g.rec.forkDue && !g.broken && !g.removed && !g.closed && g.st.Epoch() != g.rec.forkChecked
	g.rec.forkDue = false
	epoch, opaque, mine := g.st.Epoch(), g.opaque, g.st.GroupContext()
	var key EpochKey
	var keyErr error
	if due && opaque {
		key, keyErr = epochKey(g.st)
	}
	g.mu.Unlock()
	if !due || keyErr != nil {
		return
	}
	served, ok, err := g.servedContext(ctx, epoch, opaque, key)
	if err != nil {
		g.c.log.Debug("checking the group against the server's GroupInfo", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
		if transient(err) {
			// Check this epoch again after the next message processed.
			g.mu.Lock()
			if g.st.Epoch() == epoch {
				g.rec.forkDue = true
			}
			g.mu.Unlock()
		}
		return
	}
	if !ok {
		return // the group moved on: the next Commit is checked
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.st.Epoch() != epoch || g.broken || g.removed || g.closed {
		return
	}
	g.rec.forkChecked = epoch
	if bytes.Equal(served.TreeHash, mine.TreeHash) && bytes.Equal(served.ConfirmedTranscriptHash, mine.ConfirmedTranscriptHash) {
		return
	}
	ferr := fmt.Errorf("%w: after the Commit to epoch %d this client has tree hash %x and confirmed transcript hash %x; the Delivery Service's GroupInfo has %x and %x",
		ErrForked, epoch, mine.TreeHash, mine.ConfirmedTranscriptHash, served.TreeHash, served.ConfirmedTranscriptHash)
	g.c.log.Warn("this client's state of a group is not the one the server serves; rejoining", slog.String("group", fmt.Sprintf("%x", g.id)),
		slog.Uint64("epoch", epoch))
	g.broken, g.refused, g.brokenErr = true, false, ferr
	g.unsaved = append(g.unsaved, Event{Kind: EventForked, GroupID: g.id, Seq: g.processed, Epoch: epoch, Members: memberIDs(g.st), Err: ferr})
	g.dirty = true
	if err := g.persist(nil); err != nil {
		g.c.log.Warn("saving a forked group's state", slog.String("group", fmt.Sprintf("%x", g.id)), slog.String("error", err.Error()))
	}
}

// servedContext returns the GroupContext of the GroupInfo the server holds
// of the group's epoch (key opens its remote tree in an opaque group); ok
// is false if the server is at another epoch or holds none that opens.
func (g *Group) servedContext(ctx context.Context, epoch uint64, opaque bool, key EpochKey) (gc mls.GroupContext, ok bool, err error) {
	if !opaque {
		// Only the GroupInfo is compared: the tree stays on the server.
		res, err := g.c.rpc.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: g.id, WithoutTree: true}))
		if err != nil {
			return gc, false, err
		}
		if res.Msg.Epoch != epoch || len(res.Msg.GroupInfo) == 0 {
			return gc, false, nil
		}
		m, err := mls.ParseMLSMessage(res.Msg.GroupInfo)
		if err != nil || m.GroupInfo == nil {
			return gc, false, nil
		}
		return m.GroupInfo.GroupContext, true, nil
	}
	res, err := g.c.rpc.groups.GetRemoteTree(ctx, connect.NewRequest(&mlsdsv1.GetRemoteTreeRequest{GroupId: g.id}))
	if err != nil {
		return gc, false, err
	}
	if res.Msg.Epoch != epoch {
		return gc, false, nil
	}
	for _, t := range res.Msg.RemoteTrees {
		if t.Epoch != epoch {
			continue
		}
		g.mu.Lock()
		cs := g.st.GroupContext().CipherSuite
		g.mu.Unlock()
		gi, _, _, err := OpenRemoteTreeWith(cs, g.id, epoch, t.Blob, key)
		if err != nil {
			continue
		}
		return gi.GroupContext, true, nil
	}
	return gc, false, nil
}
