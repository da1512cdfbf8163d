package ds

import (
	"errors"
	"fmt"
	"time"

	"github.com/mlsds/mlsds/mls"
)

// The errors below are the whole vocabulary of refusals of the Delivery
// Service. Each one is meant to map to one transport status plus one typed
// detail, so that a client can act on it without parsing text. Sentinel
// errors are usually wrapped with a sentence that says what exactly was
// wrong; test for them with errors.Is, and for the struct types with
// errors.As.

var (
	// ErrNotFound reports an unknown client, group, KeyPackage or user.
	ErrNotFound = errors.New("ds: not found")

	// ErrAlreadyExists reports a client id, group id or KeyPackage that is
	// already registered, or a second last-resort KeyPackage for a suite.
	ErrAlreadyExists = errors.New("ds: already exists")

	// ErrNotMember reports a client acting on a group it is not (or no
	// longer) a member of.
	ErrNotMember = errors.New("ds: not a member of the group")

	// ErrPermissionDenied reports an authenticated client asking for
	// something it may not do, such as sending as another member's leaf.
	ErrPermissionDenied = errors.New("ds: permission denied")

	// ErrKeyPackagesExhausted reports that a claim found no usable
	// KeyPackage (and no last-resort one) for the target and suite.
	ErrKeyPackagesExhausted = errors.New("ds: no KeyPackage left for this client and cipher suite")

	// ErrInvalidArgument reports a request that is malformed in a way
	// that is not an MLS rule (an empty id, an ack beyond the end of the
	// group, ...). MLS objects that break a rule get an InvalidMessageError.
	ErrInvalidArgument = errors.New("ds: invalid argument")

	// ErrStateConflict is returned by a Store when the group state that a
	// caller validated against was replaced in the meantime (the
	// StateVersion in AcceptParams no longer matches). The Service retries
	// on it; it never reaches a client.
	ErrStateConflict = errors.New("ds: group state changed concurrently")
)

// WrongEpochError refuses a Commit (or Proposal) that was not built on the
// group's current epoch. The client must fetch the group's messages from
// FetchFromSeq on, process them, and rebuild its Commit for epoch Expected.
type WrongEpochError struct {
	// Expected is the group's current epoch: the epoch a Commit must carry.
	Expected uint64
	// FetchFromSeq is the group sequence number of the Commit that started
	// the current epoch (1 if no Commit was accepted yet).
	FetchFromSeq uint64
	// Got is the epoch of the refused message.
	Got uint64
}

func (e *WrongEpochError) Error() string {
	return fmt.Sprintf("ds: message is for epoch %d but the group is at epoch %d; fetch from group_seq %d, process, and rebuild for epoch %d",
		e.Got, e.Expected, e.FetchFromSeq, e.Expected)
}

// StaleEpochError refuses an application message whose epoch is older than
// the window the Service keeps open (Config.AppMessageEpochWindow).
type StaleEpochError struct {
	Current uint64 // the group's current epoch
	Got     uint64 // the epoch of the refused message
}

func (e *StaleEpochError) Error() string {
	return fmt.Sprintf("ds: application message for epoch %d is too old; the group is at epoch %d", e.Got, e.Current)
}

// InvalidMessageError refuses an MLS object that does not parse or breaks a
// rule of RFC 9420. Section names the RFC section of the rule when there is
// one ("6.2", "12.4.2").
type InvalidMessageError struct {
	Reason  string
	Section string
	Err     error // underlying cause, if any
}

func (e *InvalidMessageError) Error() string {
	if e.Section != "" {
		return fmt.Sprintf("ds: invalid message: %s (RFC 9420 §%s)", e.Reason, e.Section)
	}
	return "ds: invalid message: " + e.Reason
}

func (e *InvalidMessageError) Unwrap() error { return e.Err }

// RateLimitedError refuses a request over a rate limit. The same request
// may succeed after RetryAfter.
type RateLimitedError struct {
	RetryAfter time.Duration
	What       string // which limit: "requests", "claims by claimer", "claims for target"
}

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("ds: rate limited (%s); retry after %s", e.What, e.RetryAfter.Round(time.Millisecond))
}

// TooLargeError refuses a request over a size bound: a message over
// Config.MaxMessageSize, a group over MaxGroupSize, more KeyPackages than
// MaxKeyPackagesPerClient.
type TooLargeError struct {
	Limit int
	What  string // "message bytes", "group members", "key packages per client"
}

func (e *TooLargeError) Error() string {
	what := e.What
	if what == "" {
		what = "size"
	}
	return fmt.Sprintf("ds: over the limit of %d %s", e.Limit, what)
}

// invalidMessage turns an error from the mls package into an
// InvalidMessageError, keeping the RFC section of a *mls.ValidationError.
// context, when not empty, says which object was at fault.
func invalidMessage(context string, err error) error {
	reason := err.Error()
	section := ""
	var ve *mls.ValidationError
	if errors.As(err, &ve) {
		reason = ve.Rule
		if ve.Err != nil {
			reason += ": " + ve.Err.Error()
		}
		section = ve.Section
	}
	if context != "" {
		reason = context + ": " + reason
	}
	return &InvalidMessageError{Reason: reason, Section: section, Err: err}
}

// invalidf builds an InvalidMessageError for a rule the Service itself
// checks.
func invalidf(section, format string, args ...any) error {
	return &InvalidMessageError{Reason: fmt.Sprintf(format, args...), Section: section}
}
