package server

import (
	"context"
	"errors"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
)

// SubscribeGroup streams one group's messages from a sequence number (see
// ds.Service.SubscribeGroup). A member of a deniable group calls it with a
// membership proof and no session; a member of another group with its
// session.
func (d *deliveryService) SubscribeGroup(ctx context.Context, req *connect.Request[mlsdsv1.SubscribeGroupRequest], stream *connect.ServerStream[mlsdsv1.SubscribeGroupResponse]) error {
	s := d.s
	select {
	case <-s.draining:
		return connect.NewError(connect.CodeUnavailable, errDraining)
	default:
	}
	if err := needGroupID(req.Msg.GroupId); err != nil {
		return err
	}
	client, _ := ClientID(ctx)
	var pr *ds.MembershipProof
	owner := "client " + client
	if client == "" {
		p, err := proofOf(req)
		if err != nil {
			return err
		}
		pr = &p
		owner = "address " + p.Conn
	}
	// Bounded before anything else: the bound is the caller's, whatever
	// the group, so it tells an outsider nothing about one.
	if !s.groupStreams.take(owner, s.cfg.MaxGroupStreams) {
		return s.toConnect(ctx, &ds.QuotaExceededError{What: WhatGroupStreams, Limit: int64(s.cfg.MaxGroupStreams)}, nil)
	}
	defer s.groupStreams.give(owner)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := s.ds.SubscribeGroup(ctx, client, pr, req.Msg.GroupId, req.Msg.FromSeq)
	if err != nil {
		return s.toConnect(ctx, err, req.Msg.GroupId)
	}
	s.metrics.streamingClients.Inc()
	defer s.metrics.streamingClients.Dec()

	deadline := newStreamDeadline(deadlineWriterOf(ctx), s.cfg.WriteTimeout)
	defer deadline.stop()
	send := func(msg *mlsdsv1.SubscribeGroupResponse) error {
		deadline.ready()
		err := stream.Send(msg)
		if err != nil && deadline.timedOut() {
			s.metrics.streamsCut.WithLabelValues("write_timeout").Inc()
		}
		return err
	}
	keepAlive := time.NewTicker(s.cfg.KeepAlive)
	defer keepAlive.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.draining:
			return connect.NewError(connect.CodeUnavailable, errDraining)
		case <-deadline.idle():
			deadline.disarm() // idle: the deadline goes before it passes
		case <-keepAlive.C:
			if err := send(&mlsdsv1.SubscribeGroupResponse{Event: &mlsdsv1.SubscribeGroupResponse_KeepAlive{
				KeepAlive: &mlsdsv1.KeepAliveEvent{ServerTime: timestamppb.New(s.cfg.Now())}}}); err != nil {
				return err
			}
			s.metrics.streamEvents.WithLabelValues("keep_alive").Inc()
		case ev, ok := <-events:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return connect.NewError(connect.CodeUnavailable, errSubClosed)
			}
			if ev.Err != nil {
				if ctx.Err() != nil {
					return nil
				}
				if errors.Is(ev.Err, ds.ErrSlowConsumer) {
					s.metrics.streamsCut.WithLabelValues("slow_consumer").Inc()
					return connect.NewError(connect.CodeUnavailable, errSubClosed)
				}
				// A deniable stream whose key expired gets the answer
				// for outsiders.
				return s.toConnect(ctx, ev.Err, req.Msg.GroupId)
			}
			msg, kind := groupStreamEvent(ev)
			if msg == nil {
				continue
			}
			if err := send(msg); err != nil {
				return err
			}
			s.metrics.streamEvents.WithLabelValues(kind).Inc()
			keepAlive.Reset(s.cfg.KeepAlive)
		}
	}
}

// WhatGroupStreams is the QuotaExceeded.what of a refused SubscribeGroup:
// the caller has Config.MaxGroupStreams streams open.
const WhatGroupStreams = "open group streams"

// streamCounts counts open streams by owner.
type streamCounts struct {
	mu sync.Mutex
	n  map[string]int
}

// take counts one more stream of owner, unless it has max open.
func (c *streamCounts) take(owner string, max int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = make(map[string]int)
	}
	if c.n[owner] >= max {
		return false
	}
	c.n[owner]++
	return true
}

// give counts one stream of owner less.
func (c *streamCounts) give(owner string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[owner]--; c.n[owner] <= 0 {
		delete(c.n, owner)
	}
}

func groupStreamEvent(ev ds.Event) (*mlsdsv1.SubscribeGroupResponse, string) {
	switch {
	case ev.Message != nil:
		return &mlsdsv1.SubscribeGroupResponse{Event: &mlsdsv1.SubscribeGroupResponse_Message{Message: envelope(ev.Message)}}, "message"
	case ev.Pruned != nil:
		return &mlsdsv1.SubscribeGroupResponse{Event: &mlsdsv1.SubscribeGroupResponse_Pruned{Pruned: &mlsdsv1.PrunedEvent{
			GroupId: ev.Pruned.GroupID, OldestSeq: ev.Pruned.OldestSeq}}}, "pruned"
	case ev.CaughtUp:
		return &mlsdsv1.SubscribeGroupResponse{Event: &mlsdsv1.SubscribeGroupResponse_CaughtUp{CaughtUp: &mlsdsv1.CaughtUpEvent{}}}, "caught_up"
	}
	return nil, ""
}
