package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// InstrumentStore wraps st so that the latency of its operations lands in
// mlsds_store_latency_seconds. Give the wrapped store to ds.New. A store
// that brings its own Notifier keeps it.
func (m *Metrics) InstrumentStore(st ds.Store) ds.Store {
	t := &timedStore{Store: st, h: m.storeLatency, batch: m.acceptBatch}
	if np, ok := st.(ds.NotifierProvider); ok {
		return &timedNotifyingStore{timedStore: t, np: np}
	}
	return t
}

// timedStore times the methods of the Store interface it knows; methods
// added to the interface later pass through untimed.
type timedStore struct {
	ds.Store
	h     *prometheus.HistogramVec
	batch prometheus.Histogram // messages per engine batch
}

type timedNotifyingStore struct {
	*timedStore
	np ds.NotifierProvider
}

func (t *timedNotifyingStore) Notifier() ds.Notifier { return t.np.Notifier() }

func (t *timedStore) obs(op string, start time.Time) {
	t.h.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

func (t *timedStore) CreateClient(ctx context.Context, c ds.Client) error {
	defer t.obs("create_client", time.Now())
	return t.Store.CreateClient(ctx, c)
}

func (t *timedStore) Client(ctx context.Context, id string) (ds.Client, error) {
	defer t.obs("client", time.Now())
	return t.Store.Client(ctx, id)
}

func (t *timedStore) ClientsOfUser(ctx context.Context, userID string) ([]ds.Client, error) {
	defer t.obs("clients_of_user", time.Now())
	return t.Store.ClientsOfUser(ctx, userID)
}

func (t *timedStore) AddKeyPackages(ctx context.Context, kps []ds.KeyPackageRecord, limit int) error {
	defer t.obs("add_key_packages", time.Now())
	return t.Store.AddKeyPackages(ctx, kps, limit)
}

func (t *timedStore) KeyPackages(ctx context.Context, clientID string) ([]ds.KeyPackageRecord, error) {
	defer t.obs("key_packages", time.Now())
	return t.Store.KeyPackages(ctx, clientID)
}

func (t *timedStore) DeleteKeyPackages(ctx context.Context, clientID string, refs [][]byte) (int, error) {
	defer t.obs("delete_key_packages", time.Now())
	return t.Store.DeleteKeyPackages(ctx, clientID, refs)
}

func (t *timedStore) CountKeyPackages(ctx context.Context, clientID string, now time.Time) (map[mls.CipherSuite]int, error) {
	defer t.obs("count_key_packages", time.Now())
	return t.Store.CountKeyPackages(ctx, clientID, now)
}

func (t *timedStore) KeyPackageStock(ctx context.Context, now time.Time) (map[mls.CipherSuite]int, error) {
	defer t.obs("key_package_stock", time.Now())
	return t.Store.KeyPackageStock(ctx, now)
}

func (t *timedStore) ClaimKeyPackages(ctx context.Context, p ds.ClaimParams) ([]ds.Claim, error) {
	defer t.obs("claim_key_packages", time.Now())
	return t.Store.ClaimKeyPackages(ctx, p)
}

func (t *timedStore) KeyPackagesByRef(ctx context.Context, refs [][]byte) ([]ds.KeyPackageRecord, error) {
	defer t.obs("key_packages_by_ref", time.Now())
	return t.Store.KeyPackagesByRef(ctx, refs)
}

func (t *timedStore) CreateGroup(ctx context.Context, g ds.GroupRecord, members []string) error {
	defer t.obs("create_group", time.Now())
	return t.Store.CreateGroup(ctx, g, members)
}

func (t *timedStore) Group(ctx context.Context, groupID []byte) (ds.GroupRecord, error) {
	defer t.obs("group", time.Now())
	return t.Store.Group(ctx, groupID)
}

func (t *timedStore) GroupState(ctx context.Context, groupID []byte) (ds.GroupRecord, error) {
	defer t.obs("group_state", time.Now())
	return t.Store.GroupState(ctx, groupID)
}

func (t *timedStore) Members(ctx context.Context, groupID []byte) ([]string, error) {
	defer t.obs("members", time.Now())
	return t.Store.Members(ctx, groupID)
}

func (t *timedStore) Memberships(ctx context.Context, groupID []byte, clientID string) ([]ds.MembershipWindow, error) {
	defer t.obs("memberships", time.Now())
	return t.Store.Memberships(ctx, groupID, clientID)
}

func (t *timedStore) MessageByHash(ctx context.Context, groupID, hash []byte) (ds.Receipt, error) {
	defer t.obs("message_by_hash", time.Now())
	return t.Store.MessageByHash(ctx, groupID, hash)
}

func (t *timedStore) AcceptMessage(ctx context.Context, p ds.AcceptParams) (ds.AcceptResult, error) {
	defer t.obs("accept_message", time.Now())
	return t.Store.AcceptMessage(ctx, p)
}

func (t *timedStore) Messages(ctx context.Context, q ds.MessageQuery) ([]ds.Envelope, error) {
	defer t.obs("messages", time.Now())
	return t.Store.Messages(ctx, q)
}

func (t *timedStore) Cursors(ctx context.Context, clientID string) ([]ds.GroupCursor, error) {
	defer t.obs("cursors", time.Now())
	return t.Store.Cursors(ctx, clientID)
}

func (t *timedStore) Ack(ctx context.Context, clientID string, groupID []byte, seq uint64) error {
	defer t.obs("ack", time.Now())
	return t.Store.Ack(ctx, clientID, groupID, seq)
}

func (t *timedStore) PendingWelcomes(ctx context.Context, clientID string) ([]ds.WelcomeEvent, error) {
	defer t.obs("pending_welcomes", time.Now())
	return t.Store.PendingWelcomes(ctx, clientID)
}

// AcceptMessages keeps the engine's group commit (ds.BatchAccepter) visible
// through the wrapper; over an engine without it, the messages are
// accepted one by one, in order, which is what ds would do itself.
func (t *timedStore) AcceptMessages(ctx context.Context, ps []ds.AcceptParams) ([]ds.AcceptResult, []error) {
	defer t.obs("accept_messages", time.Now())
	if b, ok := t.Store.(ds.BatchAccepter); ok {
		t.batch.Observe(float64(len(ps)))
		return b.AcceptMessages(ctx, ps)
	}
	res, errs := make([]ds.AcceptResult, len(ps)), make([]error, len(ps))
	for i, p := range ps {
		res[i], errs[i] = t.Store.AcceptMessage(ctx, p)
	}
	return res, errs
}

// AckMany keeps the engine's batched Acks (ds.BatchAcker) visible through
// the wrapper; over an engine without it, each Ack gets its checks and
// its own transaction, as ds would do itself.
func (t *timedStore) AckMany(ctx context.Context, ps []ds.AckParams) []error {
	defer t.obs("ack_many", time.Now())
	if b, ok := t.Store.(ds.BatchAcker); ok {
		return b.AckMany(ctx, ps)
	}
	errs := make([]error, len(ps))
	for i, p := range ps {
		if p.CheckHead {
			head, err := t.Store.Group(ctx, p.GroupID)
			if err != nil {
				errs[i] = err
				continue
			}
			if p.Seq > head.LastSeq {
				errs[i] = &ds.AckBeyondHeadError{Seq: p.Seq, LastSeq: head.LastSeq}
				continue
			}
		}
		errs[i] = t.Store.Ack(ctx, p.ClientID, p.GroupID, p.Seq)
	}
	return errs
}

// AcceptMessagesAndAcks keeps the engine's Acks in message batches
// (ds.AckingAccepter) visible through the wrapper; over an engine without
// it, the messages and then the Acks are applied as above, in two
// transactions.
func (t *timedStore) AcceptMessagesAndAcks(ctx context.Context, ps []ds.AcceptParams, acks []ds.AckParams) ([]ds.AcceptResult, []error, []error) {
	b, ok := t.Store.(ds.AckingAccepter)
	if !ok {
		res, errs, ackErrs := []ds.AcceptResult{}, []error{}, []error{}
		if len(ps) > 0 {
			res, errs = t.AcceptMessages(ctx, ps)
		}
		if len(acks) > 0 {
			ackErrs = t.AckMany(ctx, acks)
		}
		return res, errs, ackErrs
	}
	defer t.obs("accept_messages_and_acks", time.Now())
	if len(ps) > 0 {
		t.batch.Observe(float64(len(ps)))
	}
	return b.AcceptMessagesAndAcks(ctx, ps, acks)
}

// The wrapper must not hide the engines' batch interfaces: without them
// every message and every Ack would pay for its own fsync.
var (
	_ ds.BatchAccepter  = (*timedStore)(nil)
	_ ds.BatchAcker     = (*timedStore)(nil)
	_ ds.AckingAccepter = (*timedStore)(nil)
)

func (t *timedStore) AddKeyPackagesWithin(ctx context.Context, kps []ds.KeyPackageRecord, lim ds.KeyPackageLimits) error {
	defer t.obs("add_key_packages", time.Now())
	return t.Store.AddKeyPackagesWithin(ctx, kps, lim)
}

func (t *timedStore) DailyUsage(ctx context.Context, clientID string, day int64) (ds.DailyUsage, error) {
	defer t.obs("daily_usage", time.Now())
	return t.Store.DailyUsage(ctx, clientID, day)
}

func (t *timedStore) AddDailyUsage(ctx context.Context, us []ds.DailyUsage) error {
	defer t.obs("add_daily_usage", time.Now())
	return t.Store.AddDailyUsage(ctx, us)
}

func (t *timedStore) ChargeDailyUsage(ctx context.Context, u, limit ds.DailyUsage) (ds.DailyUsage, error) {
	defer t.obs("charge_daily_usage", time.Now())
	return t.Store.ChargeDailyUsage(ctx, u, limit)
}
