// Package ds is the Delivery Service of mlsds: the KeyPackage directory,
// the sequencer that gives every group one order of messages and exactly
// one Commit per epoch, the membership policy and the fan-out to members.
//
// ds knows nothing of transports. A server maps its API onto the methods of
// Service, which act for an already authenticated client (the client id
// they take), and maps the typed errors of errors.go onto status codes.
// Durable state lives behind the Store interface; engines are in
// ds/store/... and pass the conformance suite in ds/store/storetest.
package ds

import (
	"context"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/mlsds/mlsds/mls"
)

// Service is the Delivery Service. It is safe for concurrent use, and
// several Services (on several nodes) may share one Store whose engine
// supports it.
type Service struct {
	store    Store
	cfg      Config
	notifier Notifier

	requests        *keyedLimiter
	claimsBy        *keyedLimiter
	claimsForTarget *keyedLimiter

	// batcher groups the messages of concurrent Sends into one
	// transaction (batch.go); nil if the store cannot.
	batcher *batcher

	// states caches the decoded states of transparent groups
	// (statecache.go).
	states stateCache

	// fan shares the recent messages of each group between the
	// subscriptions of this node (fanout.go).
	fan *fanout

	// meter adds up the bytes of the daily quota (quota.go).
	meter *dailyMeter

	// prune is the background pruner (prune.go).
	prune *pruner

	// den holds the replay check and limits of deniable groups
	// (deniable.go).
	den *deniableState
}

// New returns a Service over store. The zero Config is a reasonable one.
func New(store Store, cfg Config) *Service {
	cfg = cfg.withDefaults()
	n := cfg.Notifier
	if n == nil {
		if p, ok := store.(NotifierProvider); ok {
			n = p.Notifier()
		}
	}
	if n == nil {
		n = NewLocalNotifier()
	}
	s := &Service{
		store:    store,
		cfg:      cfg,
		notifier: n,
		requests: newKeyedLimiter("requests", cfg.RequestsPerSecond, cfg.RequestBurst, cfg.MaxRateLimitKeys),
		claimsBy: newKeyedLimiter("claims by claimer", perMinute(cfg.ClaimsPerMinute),
			burstOf(cfg.ClaimsPerMinute), cfg.MaxRateLimitKeys),
		claimsForTarget: newKeyedLimiter("claims for target", perMinute(cfg.ClaimsPerTargetPerMinute),
			burstOf(cfg.ClaimsPerTargetPerMinute), cfg.MaxRateLimitKeys),
	}
	s.batcher = newBatcher(store, s.notify)
	s.fan = newFanout(store, n, cfg)
	s.meter = newDailyMeter(store, cfg)
	s.den = newDeniableState(cfg)
	s.startPruner()
	return s
}

func perMinute(n float64) float64 {
	if n < 0 {
		return n
	}
	return n / 60
}

// burstOf lets a full minute's worth of claims happen at once.
func burstOf(perMinute float64) int {
	if perMinute < 1 {
		return 1
	}
	return int(perMinute)
}

// Config returns the Service's configuration with defaults filled in.
func (s *Service) Config() Config { return s.cfg }

// Notifier returns the Notifier the Service wakes subscriptions with.
func (s *Service) Notifier() Notifier { return s.notifier }

// now returns the current time truncated to the microsecond, the precision
// every Store keeps.
func (s *Service) now() time.Time {
	return s.cfg.Now().UTC().Truncate(time.Microsecond)
}

// allow charges one request to client.
func (s *Service) allow(client string) error {
	return s.requests.reserve(s.cfg.Now(), client)
}

// notify wakes subscriptions. A failure only delays delivery until the
// subscriptions poll, so it is not reported to the caller.
func (s *Service) notify(topics ...string) {
	if len(topics) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.notifier.Notify(ctx, topics...)
}

// checkID validates a client or user id.
func (s *Service) checkID(kind, id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty %s id", ErrInvalidArgument, kind)
	}
	if len(id) > s.cfg.MaxClientIDSize {
		return fmt.Errorf("%w: %s id of %d bytes is over the limit of %d", ErrInvalidArgument, kind, len(id), s.cfg.MaxClientIDSize)
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("%w: %s id is not valid UTF-8", ErrInvalidArgument, kind)
	}
	return CheckIdentifier(kind, id)
}

// RegisterClient registers c as Register does, with nothing but the
// client: the first client of a user, or the same registration again.
// Refusals wrap ErrRegistrationRefused.
func (s *Service) RegisterClient(ctx context.Context, c Client) error {
	_, err := s.Register(ctx, Registration{Client: c})
	return err
}

// Client returns a registered client, or ErrNotFound.
func (s *Service) Client(ctx context.Context, id string) (Client, error) {
	return s.store.Client(ctx, id)
}

// suiteKnown reports whether the mls package implements cs.
func suiteKnown(cs mls.CipherSuite) bool {
	return cs.Supported()
}
