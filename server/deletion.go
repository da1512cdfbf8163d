package server

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
)

// Deleting clients, and ending their sessions. Session tokens are
// stateless (tokens.go), so deleting a client cannot revoke them: instead
// every authenticated call checks that its client still exists, and that
// the token was issued to it and not to an earlier client of the same id
// that was deleted (the token's issue time is before the client's
// registration). Each node remembers the clients it found for
// Config.LiveClientTTL, so that the check reads the store once per client
// and TTL, not on every call. The node that deletes a client forgets it at
// once (and ends its Subscribe streams); every other node accepts the
// client's calls for at most LiveClientTTL more, and lets a Subscribe
// stream it serves run on until the client hangs up, though it delivers
// nothing, since the client's memberships are gone.

func (a *accountService) DeleteClient(ctx context.Context, req *connect.Request[mlsdsv1.DeleteClientRequest]) (*connect.Response[mlsdsv1.DeleteClientResponse], error) {
	s, client := a.s, mustClient(ctx)
	d, err := s.ds.DeleteClient(ctx, client)
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	s.clientDeleted(ctx, client, "self", len(d.Groups), len(d.DeletedGroups))
	return connect.NewResponse(&mlsdsv1.DeleteClientResponse{GroupsLeft: uint32(len(d.Groups))}), nil
}

var errClientDeleted = errors.New("client deleted")

// clientDeleted forgets a deleted client on this node: its calls are
// refused from now on and its streams end.
func (s *Server) clientDeleted(ctx context.Context, client, by string, groups, deletedGroups int) {
	s.live.forget(client)
	s.streams.endClient(client, errClientDeleted)
	s.metrics.authFailures.WithLabelValues("client_deleted") // register the label
	s.log.LogAttrs(ctx, slog.LevelInfo, "client deleted", slog.String("client", client), slog.String("by", by),
		slog.Int("groups_left", groups), slog.Int("groups_deleted", deletedGroups))
}

// endClient ends every Subscribe stream of client on this node.
func (st *streams) endClient(client string, cause error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, e := range st.byClient[client] {
		e.cancel(cause)
	}
}

var errGone = errors.New("session token is for a client that was deleted; register and authenticate again")

// checkLive refuses a session token whose client no longer exists, or
// was registered again after the token was issued; exp is the token's
// expiry (sessionExpiry; zero if it has none).
func (s *Server) checkLive(ctx context.Context, client string, exp time.Time) error {
	created, err := s.live.created(ctx, client, s.cfg.Now(), func(ctx context.Context) (time.Time, error) {
		c, err := s.ds.Client(ctx, client)
		return c.CreatedAt, err
	})
	if errors.Is(err, ds.ErrNotFound) {
		s.metrics.authFailures.WithLabelValues("client_deleted").Inc()
		return connect.NewError(connect.CodeUnauthenticated, errGone)
	} else if err != nil {
		return s.toConnect(ctx, err, nil)
	}
	// A token is issued after its client registered; one issued before
	// (its expiry minus the session lifetime, to the second it keeps) was
	// issued to an earlier client of the same id.
	if !exp.IsZero() && !created.IsZero() &&
		exp.Add(-s.cfg.SessionTTL).Add(time.Second).Before(created) {
		s.metrics.authFailures.WithLabelValues("client_deleted").Inc()
		return connect.NewError(connect.CodeUnauthenticated, errGone)
	}
	return nil
}

// sessionExpiry reads the expiry of a session token that tokens.verify
// accepted (see tokens.session for the layout).
func sessionExpiry(token string) (time.Time, bool) {
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok {
		return time.Time{}, false
	}
	p, _, _ := strings.Cut(rest, ".")
	payload, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil || len(payload) < 8 {
		return time.Time{}, false
	}
	return time.Unix(int64(binary.BigEndian.Uint64(payload)), 0), true
}

// liveClients remembers, for a while, the registration time of clients
// that a node found in the store.
type liveClients struct {
	ttl time.Duration
	max int

	mu sync.Mutex
	m  map[string]liveEntry
}

type liveEntry struct {
	created time.Time
	checked time.Time
}

func newLiveClients(ttl time.Duration, max int) *liveClients {
	return &liveClients{ttl: ttl, max: max, m: make(map[string]liveEntry)}
}

// created returns the registration time of client, from memory if it was
// read less than ttl ago, else by lookup (whose errors it returns).
func (l *liveClients) created(ctx context.Context, client string, now time.Time, lookup func(context.Context) (time.Time, error)) (time.Time, error) {
	l.mu.Lock()
	e, ok := l.m[client]
	l.mu.Unlock()
	if ok && now.Sub(e.checked) < l.ttl && !now.Before(e.checked) {
		return e.created, nil
	}
	created, err := lookup(ctx)
	if err != nil {
		return time.Time{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.m) >= l.max {
		for id, e := range l.m {
			if now.Sub(e.checked) >= l.ttl {
				delete(l.m, id)
			}
		}
		if len(l.m) >= l.max {
			clear(l.m)
		}
	}
	l.m[client] = liveEntry{created: created, checked: now}
	return created, nil
}

// forget drops client from memory, so that its next call reads the store.
func (l *liveClients) forget(client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.m, client)
}
