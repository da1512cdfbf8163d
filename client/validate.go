package client

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// Members check credentials too (RFC 9420 §5.3.1): every leaf this client
// meets in a group — the whole tree of a Welcome or of an external join,
// the leaves a Commit adds, the leaves Update proposals and UpdatePaths
// replace — goes through a CredentialValidator before the state that
// holds it is taken. The Delivery Service checks the same bindings, but a
// member does not have to trust it to.

// CredentialValidator is the client's Authentication Service (RFC 9750
// §5): it says whether a leaf's credential and signature key belong
// together. Set one in Config.CredentialValidator to bring your own; the
// default asks the Delivery Service's directory (AccountService.
// GetClientKeys).
//
// ValidateCredential returns nil to accept the leaf at index leaf of group
// groupID. Any other error refuses it, and with it the Welcome or Commit
// that brings it in (EventRefused), unless it wraps
// ErrValidatorUnavailable: the client then leaves the message for later and
// tries again. It is called from the goroutines that process the groups'
// messages, possibly concurrently for different groups.
type CredentialValidator interface {
	ValidateCredential(ctx context.Context, groupID []byte, leaf mls.LeafIndex, cred mls.Credential, signatureKey []byte) error
}

// ErrValidatorUnavailable is wrapped by a CredentialValidator's error when
// it could not decide now (its Authentication Service is unreachable): the
// message is processed again later instead of being refused.
var ErrValidatorUnavailable = errors.New("client: the credential validator cannot decide now; the message is processed again later")

// ErrCredentialUnbound is wrapped by the default CredentialValidator's
// error when the directory does not bind the leaf's signature key to its
// credential's client id.
var ErrCredentialUnbound = errors.New("client: the Delivery Service's directory does not bind this signature key to this client id")

// CredentialError describes a leaf that failed the credential check: the
// Err of an EventRefused, and the error of a join or Rejoin that met it.
type CredentialError struct {
	GroupID  []byte
	Leaf     mls.LeafIndex
	Identity string // the credential's identity (mls.CredentialIdentity)
	// Rule is the rule the leaf breaks, citing RFC 9420.
	Rule string
	// Err is the CredentialValidator's error.
	Err error
}

// credentialRule is the Rule of every CredentialError.
const credentialRule = "RFC 9420 §5.3.1: a member's credential and signature key must be bound by the Authentication Service"

func (e *CredentialError) Error() string {
	return fmt.Sprintf("client: group %x: leaf %d (%q) failed the credential check (%s): %v", e.GroupID, e.Leaf, e.Identity, e.Rule, e.Err)
}

func (e *CredentialError) Unwrap() error { return e.Err }

// leafRef is a leaf to validate.
type leafRef struct {
	index mls.LeafIndex
	node  *mls.LeafNode
}

// validator returns the client's CredentialValidator.
func (c *Client) validator() CredentialValidator {
	if c.cfg.CredentialValidator != nil {
		return c.cfg.CredentialValidator
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.directory == nil {
		c.directory = &directoryValidator{c: c, bound: map[string]bool{}}
	}
	return c.directory
}

// validateLeaves checks leaves of group groupID with the client's
// CredentialValidator. It returns nil if all pass, a *CredentialError for
// the first that does not, or an error wrapping ErrValidatorUnavailable
// (or ctx's error) if the validator could not decide.
func (c *Client) validateLeaves(ctx context.Context, groupID []byte, leaves []leafRef) error {
	if len(leaves) == 0 {
		return nil
	}
	v := c.validator()
	if d, ok := v.(*directoryValidator); ok {
		// One GetClientKeys call per 1000 clients not in the cache.
		if err := d.prefetch(ctx, leaves); err != nil {
			return err
		}
	}
	for _, l := range leaves {
		err := v.ValidateCredential(ctx, groupID, l.index, l.node.Credential, l.node.SignatureKey)
		if err == nil {
			continue
		}
		if errors.Is(err, ErrValidatorUnavailable) || ctx.Err() != nil {
			return fmt.Errorf("client: checking the credential of leaf %d of group %x: %w", l.index, groupID, err)
		}
		return &CredentialError{GroupID: groupID, Leaf: l.index, Identity: string(mls.CredentialIdentity(&l.node.Credential)), Rule: credentialRule, Err: err}
	}
	return nil
}

// validateTree checks every leaf of tree (a Welcome's, or a GroupInfo's for
// an external join), as validateLeaves does.
func (c *Client) validateTree(ctx context.Context, groupID []byte, tree *mls.RatchetTree) error {
	var leaves []leafRef
	for i, ln := range tree.Leaves() {
		leaves = append(leaves, leafRef{i, ln})
	}
	return c.validateLeaves(ctx, groupID, leaves)
}

// validationCtx bounds a validation made while processing a group's
// messages, which holds the group.
func (c *Client) validationCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.ctx, 30*time.Second)
}

// isUnavailable reports whether err is a validation that could not decide
// (as opposed to a refusal).
func isUnavailable(err error) bool {
	var ce *CredentialError
	return err != nil && !errors.As(err, &ce)
}

// directoryValidator is the default CredentialValidator: it accepts a
// credential that names a client id the Delivery Service's directory binds
// the signature key to: a basic credential by its identity, an x509
// credential (RFC 9420 §5.3) by its leaf certificate's SAN URI
// (ds.X509ClientURIPrefix), once that certificate certifies the signature
// key and, with Config.X509Roots, its chain verifies to one of them now. The bindings it has seen are
// cached for the life of the Client (a client's registered keys do not
// change under it); one it has not is asked for in batches.
type directoryValidator struct {
	c *Client

	mu    sync.Mutex
	bound map[string]bool // clientID + "\x00" + signature key
	// legacy is set once the server answered Unimplemented: it keeps no
	// directory to check against, so leaves are accepted (logged once).
	legacy bool
}

// getClientKeysBatch is the most client ids one GetClientKeys call names.
const getClientKeysBatch = 1000

func bindingKey(id string, key []byte) string { return id + "\x00" + string(key) }

func (v *directoryValidator) ValidateCredential(ctx context.Context, groupID []byte, leaf mls.LeafIndex, cred mls.Credential, signatureKey []byte) error {
	id, err := credentialClient(&cred)
	if err != nil {
		return err
	}
	if cred.CredentialType == mls.CredentialTypeX509 {
		if err := checkX509(&cred, signatureKey, v.c.cfg.X509Roots, time.Now()); err != nil {
			return err
		}
	}
	if v.known(id, signatureKey) {
		return nil
	}
	if err := v.fetch(ctx, []string{id}); err != nil {
		return err
	}
	if v.known(id, signatureKey) {
		return nil
	}
	return fmt.Errorf("%w: client %q", ErrCredentialUnbound, id)
}

// known reports whether id's key is known to be bound (or the server
// keeps no directory).
func (v *directoryValidator) known(id string, key []byte) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.legacy || v.bound[bindingKey(id, key)]
}

// prefetch asks the directory, in batches, for the clients of leaves whose
// binding is not cached.
func (v *directoryValidator) prefetch(ctx context.Context, leaves []leafRef) error {
	var ids []string
	seen := map[string]bool{}
	for _, l := range leaves {
		id, err := credentialClient(&l.node.Credential)
		if err != nil {
			continue
		}
		if seen[id] || v.known(id, l.node.SignatureKey) {
			continue
		}
		seen[id] = true
		ids = append(ids, id)
	}
	for len(ids) > 0 {
		n := min(len(ids), getClientKeysBatch)
		if err := v.fetch(ctx, ids[:n]); err != nil {
			return err
		}
		ids = ids[n:]
	}
	return nil
}

// fetch asks the directory for the keys of ids and caches them.
func (v *directoryValidator) fetch(ctx context.Context, ids []string) error {
	var res *connect.Response[mlsdsv1.GetClientKeysResponse]
	var err error
	// As patient as every other call of the client: a server restarting
	// under a Commit must not fail it.
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if attempt > 0 {
			if serr := sleep(ctx, retryAfter(err, attempt)); serr != nil {
				return fmt.Errorf("%w: %v", ErrValidatorUnavailable, serr)
			}
		}
		res, err = v.c.rpc.account.GetClientKeys(ctx, connect.NewRequest(&mlsdsv1.GetClientKeysRequest{ClientIds: ids}))
		if err == nil || !transient(err) {
			break
		}
	}
	if connect.CodeOf(err) == connect.CodeUnimplemented {
		v.mu.Lock()
		first := !v.legacy
		v.legacy = true
		v.mu.Unlock()
		if first {
			v.c.log.Warn("the server keeps no client directory (GetClientKeys is unimplemented): credentials are not checked; set Config.CredentialValidator to check them")
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: asking the directory for %d clients: %v", ErrValidatorUnavailable, len(ids), err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, ck := range res.Msg.Clients {
		for _, k := range ck.SignatureKeys {
			v.bound[bindingKey(ck.ClientId, k)] = true
		}
	}
	return nil
}

// refusedEvent makes the EventRefused of err (a *CredentialError) for the
// message that base describes.
func refusedEvent(base Event, err *CredentialError) Event {
	e := base
	e.Kind, e.Err, e.Members = EventRefused, err, []string{err.Identity}
	return e
}

// logRefused logs a refusal.
func (c *Client) logRefused(what string, err *CredentialError) {
	c.log.Warn("refused "+what+": a leaf failed the credential check", slog.String("group", fmt.Sprintf("%x", err.GroupID)),
		slog.Uint64("leaf", uint64(err.Leaf)), slog.String("identity", err.Identity), slog.String("error", err.Err.Error()))
}

// credentialClient returns the client id a credential names, without
// verifying anything: the identity of a basic credential, the SAN URI of
// an x509 credential's leaf certificate.
func credentialClient(cred *mls.Credential) (string, error) {
	switch cred.CredentialType {
	case mls.CredentialTypeBasic:
		return string(cred.Identity), nil
	case mls.CredentialTypeX509:
		if len(cred.Certificates) == 0 {
			return "", fmt.Errorf("%w: the x509 credential holds no certificate", ErrCredentialUnbound)
		}
		cert, err := x509.ParseCertificate(cred.Certificates[0])
		if err != nil {
			return "", fmt.Errorf("%w: the x509 credential's leaf certificate does not parse: %v", ErrCredentialUnbound, err)
		}
		id, err := ds.X509ClientID(cert)
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrCredentialUnbound, err)
		}
		return id, nil
	}
	return "", fmt.Errorf("%w: the directory binds basic and x509 credentials, not %v ones; set Config.CredentialValidator to check others",
		ErrCredentialUnbound, cred.CredentialType)
}

// checkX509 checks what an x509 credential says itself (RFC 9420
// §5.3.1): its leaf certificate certifies signatureKey, and, when roots is
// not nil, its chain (the certificates after the first as intermediates)
// verifies to one of roots at now.
func checkX509(cred *mls.Credential, signatureKey []byte, roots *x509.CertPool, now time.Time) error {
	certs := make([]*x509.Certificate, len(cred.Certificates))
	for i, der := range cred.Certificates {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("%w: certificate %d of the x509 credential does not parse: %v", ErrCredentialUnbound, i, err)
		}
		certs[i] = cert
	}
	pub, err := ds.SubjectPublicKeyBytes(certs[0])
	if err != nil || !bytes.Equal(pub, signatureKey) {
		return fmt.Errorf("%w: the x509 credential certifies another key than the leaf's signature key", ErrCredentialUnbound)
	}
	if roots == nil {
		return nil
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("%w: the x509 credential's chain does not verify to Config.X509Roots: %v", ErrCredentialUnbound, err)
	}
	return nil
}
