package mls

import (
	"bytes"
	"fmt"
	"math"
	"time"

	circlhpke "github.com/cloudflare/circl/hpke"
)

// This file holds the validity rules for LeafNodes (§7.3) and KeyPackages
// (§10.1). Each broken rule is reported as a *ValidationError that names
// the rule and the section it comes from.
//
// What is not checked here: whether a credential is acceptable, which is
// the job of the application's Authentication Service (§5.3.1). A caller
// that has one checks the credential after these rules pass.

// LeafNodeContext says where a LeafNode was found, which decides the rules
// of §7.3 that apply to it.
type LeafNodeContext struct {
	// Source is the leaf_node_source the situation requires: key_package
	// for a KeyPackage or an Add, update for an Update proposal, commit for
	// the leaf of an UpdatePath.
	Source LeafNodeSource

	// GroupID and LeafIndex bind the signature of an update or commit leaf
	// to its place in the group (§7.2). LeafIndex is also the leaf being
	// replaced, whose keys do not count against the uniqueness rule.
	GroupID   []byte
	LeafIndex LeafIndex

	// Tree is the group's ratchet tree, or nil outside a group. With a
	// tree, the leaf's credential type must be supported by every other
	// member and it must support theirs, and its encryption and signature
	// keys must not appear elsewhere in the tree (§7.3). For the update and
	// commit sources the leaf at LeafIndex is the one being replaced (for
	// the joiner of an external Commit, name a blank leaf); for
	// key_package, the leaf is new and LeafIndex is ignored. These checks
	// scan the tree, O(n); PublicGroupState keeps indexes instead.
	Tree *RatchetTree

	// Extensions are the GroupContext extensions of the group; a
	// required_capabilities extension among them must be satisfied (§7.3).
	Extensions Extensions

	// Now, if not zero, must lie within the lifetime of a key_package leaf
	// (§7.3).
	Now time.Time

	// MaxLifetime, if not zero, bounds not_after - not_before of a
	// key_package leaf (§7.2).
	MaxLifetime time.Duration
}

// ValidateLeafNode checks leaf against the rules of §7.3 for the situation
// ctx describes, in cipher suite cs. It returns a *ValidationError naming
// the first rule that leaf breaks, or an *UnknownCipherSuiteError.
func ValidateLeafNode(cs CipherSuite, leaf *LeafNode, ctx LeafNodeContext) error {
	if err := cs.check(); err != nil {
		return err
	}
	req, err := requiredCapabilitiesOf(ctx.Extensions)
	if err != nil {
		return err
	}
	v := leafCheck{
		cs:          cs,
		groupID:     ctx.GroupID,
		leafIndex:   ctx.LeafIndex,
		source:      ctx.Source,
		required:    req,
		now:         ctx.Now,
		maxLifetime: ctx.MaxLifetime,
	}
	if ctx.Tree != nil {
		v.members = newTreeMembers(ctx.Tree)
		if ctx.Source != LeafNodeSourceKeyPackage {
			v.replacing = true
		}
	}
	return v.validate(leaf)
}

// ValidateKeyPackage checks kp against the rules of §10.1 that do not
// depend on a group: the protocol version is mls10, the cipher suite is
// supported, kp is signed by its leaf's signature key, the leaf node is
// valid for a KeyPackage (§7.3, with source key_package, a lifetime that
// covers now unless now is zero, and a total lifetime of at most
// maxLifetime unless maxLifetime is 0), no extension type appears twice in
// kp's extensions (§13.4), and init_key differs from the leaf's
// encryption_key. Unknown extensions of kp, listed in the leaf's
// capabilities or not, are ignored (§13.4), and so are unknown values in
// the capabilities: GREASE values (§13.5) pass like any other.
//
// A group member adding kp must in addition check that its version and
// cipher suite are those of the group; PublicGroupState does.
func ValidateKeyPackage(kp *KeyPackage, now time.Time, maxLifetime time.Duration) error {
	return validateKeyPackage(kp, leafCheck{
		cs:          kp.CipherSuite,
		source:      LeafNodeSourceKeyPackage,
		now:         now,
		maxLifetime: maxLifetime,
	})
}

// validateKeyPackage checks kp with the leaf rules set up in v; v.cs must
// be kp's suite.
func validateKeyPackage(kp *KeyPackage, v leafCheck) error {
	if kp.Version != ProtocolVersionMLS10 {
		return invalidf("10.1", "KeyPackage has protocol version %d; only mls10 (1) is supported", kp.Version)
	}
	if !kp.CipherSuite.Supported() {
		return invalidf("10.1", "KeyPackage has cipher suite %d, which is not supported", uint16(kp.CipherSuite))
	}
	if !validHPKEPublicKey(kp.CipherSuite, kp.InitKey) {
		return invalidf("10", "KeyPackage init_key is not a valid HPKE public key for %s", kp.CipherSuite)
	}
	if err := v.validate(&kp.LeafNode); err != nil {
		return err
	}
	if err := kp.VerifySignature(); err != nil {
		return &ValidationError{Rule: "KeyPackage signature does not verify with leaf_node.signature_key", Section: "10.1", Err: err}
	}
	// §10 has the creator of a KeyPackage list the types of
	// KeyPackage.extensions in its capabilities, but a receiver ignores
	// the extensions there it does not know (§10, §13.4), GREASE ones
	// included (§13.5), whether listed or not. Every type it knows is a
	// default one, supported without being listed (§7.2).
	if t, dup := duplicateExtension(kp.Extensions); dup {
		return invalidf("13.4", "KeyPackage extensions list type %d twice", uint16(t))
	}
	if bytes.Equal(kp.InitKey, kp.LeafNode.EncryptionKey) {
		return invalid("10.1", "KeyPackage init_key equals leaf_node.encryption_key; they must differ")
	}
	return nil
}

// memberSet answers the questions of §7.3 about the other members of a
// group in constant time. "self" is the leaf being validated: its current
// occupant (if any) is excluded from every answer.
type memberSet interface {
	// encryptionKeyUsedElsewhere reports whether a node other than leaf
	// self holds key.
	encryptionKeyUsedElsewhere(key []byte, self LeafIndex, hasSelf bool) bool
	// signatureKeyUsedElsewhere reports whether a leaf other than self
	// holds key.
	signatureKeyUsedElsewhere(key []byte, self LeafIndex, hasSelf bool) bool
	// credentialSupportedByOthers reports whether every member other than
	// self lists ct in its capabilities.
	credentialSupportedByOthers(ct CredentialType, self LeafIndex, hasSelf bool) bool
	// credentialTypesOfOthers returns the credential types that members
	// other than self use.
	credentialTypesOfOthers(self LeafIndex, hasSelf bool) []CredentialType
}

// leafCheck holds everything the §7.3 rules need besides the leaf.
type leafCheck struct {
	cs          CipherSuite
	groupID     []byte
	leafIndex   LeafIndex
	source      LeafNodeSource
	required    *RequiredCapabilities // nil if the group has none
	now         time.Time
	maxLifetime time.Duration

	members   memberSet // nil outside a group
	replacing bool      // the leaf at leafIndex is being replaced (self)

	// skipUniqueness leaves the key uniqueness rule to the caller, which
	// checks it after applying a whole proposal list.
	skipUniqueness bool
}

func (v *leafCheck) validate(leaf *LeafNode) error {
	if leaf.LeafNodeSource != v.source {
		return invalidf("7.3", "LeafNode has leaf_node_source %s where %s is required", sourceName(leaf.LeafNodeSource), sourceName(v.source))
	}
	if !validHPKEPublicKey(v.cs, leaf.EncryptionKey) {
		return invalidf("7.2", "LeafNode encryption_key is not a valid HPKE public key for %s", v.cs)
	}
	if err := leaf.VerifySignature(v.cs, v.groupID, v.leafIndex); err != nil {
		return &ValidationError{Rule: "LeafNode signature does not verify with its signature_key", Section: "7.3", Err: err}
	}
	if !hasCredential(leaf.Capabilities.Credentials, leaf.Credential.CredentialType) {
		return invalidf("7.2", "LeafNode credential type %d is not listed in its own capabilities", uint16(leaf.Credential.CredentialType))
	}
	if t, ok := unsupportedExtension(leaf.Extensions, &leaf.Capabilities); !ok {
		return invalidf("7.3", "LeafNode carries extension type %d that its capabilities do not list", uint16(t))
	}
	if t, dup := duplicateExtension(leaf.Extensions); dup {
		return invalidf("13.4", "LeafNode extensions list type %d twice", uint16(t))
	}
	if err := checkRequiredCapabilities(v.required, &leaf.Capabilities); err != nil {
		return err
	}
	if leaf.LeafNodeSource == LeafNodeSourceKeyPackage {
		if err := v.checkLifetime(leaf.Lifetime); err != nil {
			return err
		}
	}
	if v.members != nil {
		self, hasSelf := v.leafIndex, v.replacing
		ct := leaf.Credential.CredentialType
		if !v.members.credentialSupportedByOthers(ct, self, hasSelf) {
			return invalidf("7.3", "LeafNode credential type %d is not supported by every member of the group", uint16(ct))
		}
		for _, other := range v.members.credentialTypesOfOthers(self, hasSelf) {
			if !hasCredential(leaf.Capabilities.Credentials, other) {
				return invalidf("7.3", "LeafNode capabilities do not list credential type %d, which a member of the group uses", uint16(other))
			}
		}
		if !v.skipUniqueness {
			if v.members.encryptionKeyUsedElsewhere(leaf.EncryptionKey, self, hasSelf) {
				return invalid("7.3", "LeafNode encryption_key already appears in the ratchet tree")
			}
			if v.members.signatureKeyUsedElsewhere(leaf.SignatureKey, self, hasSelf) {
				return invalid("7.3", "LeafNode signature_key is already used by another member")
			}
		}
	}
	return nil
}

func (v *leafCheck) checkLifetime(lt *Lifetime) error {
	if lt == nil {
		return invalid("7.2", "key_package LeafNode has no lifetime")
	}
	if lt.NotBefore > lt.NotAfter {
		return invalidf("7.2", "LeafNode lifetime ends (%d) before it begins (%d)", lt.NotAfter, lt.NotBefore)
	}
	if v.maxLifetime > 0 {
		max := uint64(v.maxLifetime / time.Second)
		if lt.NotAfter-lt.NotBefore > max {
			return invalidf("7.2", "LeafNode lifetime of %s exceeds the maximum of %s", lifetimeString(lt.NotAfter-lt.NotBefore), v.maxLifetime)
		}
	}
	if !v.now.IsZero() {
		now := v.now.Unix()
		if now < 0 || uint64(now) < lt.NotBefore {
			return invalidf("7.3", "LeafNode lifetime begins at %s, after the current time", unixString(lt.NotBefore))
		}
		if uint64(now) > lt.NotAfter {
			return invalidf("7.3", "LeafNode lifetime ended at %s", unixString(lt.NotAfter))
		}
	}
	return nil
}

func lifetimeString(secs uint64) string {
	if secs > uint64(math.MaxInt64/int64(time.Second)) {
		return fmt.Sprintf("%ds", secs)
	}
	return (time.Duration(secs) * time.Second).String()
}

func unixString(secs uint64) string {
	if secs > math.MaxInt64 {
		return fmt.Sprintf("%d (Unix time)", secs)
	}
	return time.Unix(int64(secs), 0).UTC().Format(time.RFC3339)
}

func sourceName(s LeafNodeSource) string {
	switch s {
	case LeafNodeSourceKeyPackage:
		return "key_package"
	case LeafNodeSourceUpdate:
		return "update"
	case LeafNodeSourceCommit:
		return "commit"
	}
	return fmt.Sprintf("%d", uint8(s))
}

// defaultExtension reports whether t is one of the extension types that
// every client supports without listing it (§7.2).
func defaultExtension(t ExtensionType) bool {
	return t >= ExtensionTypeApplicationID && t <= ExtensionTypeExternalSenders
}

// defaultProposal reports whether t is one of the proposal types that
// every client supports without listing it (§7.2).
func defaultProposal(t ProposalType) bool {
	return t >= ProposalTypeAdd && t <= ProposalTypeGroupContextExtensions
}

func hasCredential(list []CredentialType, t CredentialType) bool {
	for _, x := range list {
		if x == t {
			return true
		}
	}
	return false
}

func hasExtension(list []ExtensionType, t ExtensionType) bool {
	for _, x := range list {
		if x == t {
			return true
		}
	}
	return false
}

func hasProposal(list []ProposalType, t ProposalType) bool {
	for _, x := range list {
		if x == t {
			return true
		}
	}
	return false
}

// supportsExtension reports whether caps covers extension type t.
func supportsExtension(caps *Capabilities, t ExtensionType) bool {
	return defaultExtension(t) || hasExtension(caps.Extensions, t)
}

// supportsProposal reports whether caps covers proposal type t.
func supportsProposal(caps *Capabilities, t ProposalType) bool {
	return defaultProposal(t) || hasProposal(caps.Proposals, t)
}

// unsupportedExtension returns the first extension of es whose type caps
// does not cover, and false; or true if caps covers them all.
func unsupportedExtension(es Extensions, caps *Capabilities) (ExtensionType, bool) {
	for _, e := range es {
		if !supportsExtension(caps, e.ExtensionType) {
			return e.ExtensionType, false
		}
	}
	return 0, true
}

// requiredCapabilitiesOf decodes the required_capabilities extension of a
// GroupContext's extensions, or returns nil if there is none.
func requiredCapabilitiesOf(es Extensions) (*RequiredCapabilities, error) {
	ext, ok := es.Find(ExtensionTypeRequiredCapabilities)
	if !ok {
		return nil, nil
	}
	rc := new(RequiredCapabilities)
	if err := rc.UnmarshalBinary(ext.ExtensionData); err != nil {
		return nil, &ValidationError{Rule: "required_capabilities extension is malformed", Section: "11.1", Err: err}
	}
	return rc, nil
}

// checkRequiredCapabilities reports the first requirement of rc that caps
// does not meet (§7.3, §11.1). Default extension and proposal types count
// as supported; credential types have no defaults.
func checkRequiredCapabilities(rc *RequiredCapabilities, caps *Capabilities) error {
	if rc == nil {
		return nil
	}
	for _, t := range rc.ExtensionTypes {
		if !supportsExtension(caps, t) {
			return invalidf("7.3", "LeafNode capabilities lack extension type %d, which the group's required_capabilities require", uint16(t))
		}
	}
	for _, t := range rc.ProposalTypes {
		if !supportsProposal(caps, t) {
			return invalidf("7.3", "LeafNode capabilities lack proposal type %d, which the group's required_capabilities require", uint16(t))
		}
	}
	for _, t := range rc.CredentialTypes {
		if !hasCredential(caps.Credentials, t) {
			return invalidf("7.3", "LeafNode capabilities lack credential type %d, which the group's required_capabilities require", uint16(t))
		}
	}
	return nil
}

// validHPKEPublicKey reports whether pub parses as a public key of the
// KEM of cs (§5.1.1).
func validHPKEPublicKey(cs CipherSuite, pub []byte) bool {
	p := cs.params()
	if p == nil {
		return false
	}
	if p.x448 {
		_, err := circlhpke.KEM_X448_HKDF_SHA512.Scheme().UnmarshalBinaryPublicKey(pub)
		return err == nil
	}
	_, err := p.kem.NewPublicKey(pub)
	return err == nil
}

// ValidateGroupInfoExternalPub checks the external_pub extension of a
// GroupInfo, if it has one: its data must be an ExternalPub struct
// (§12.4.3.2) holding a public key of the group's KEM. A GroupInfo that
// fails this cannot be used by any conforming joiner, so a Delivery Service
// should not publish it.
func ValidateGroupInfoExternalPub(gi *GroupInfo) error {
	if _, ok := gi.Extensions.Find(ExtensionTypeExternalPub); !ok {
		return nil
	}
	pub, err := gi.ExternalPub()
	if err != nil {
		return &ValidationError{Rule: "external_pub extension is not an ExternalPub struct", Section: "12.4.3.2", Err: err}
	}
	if !validHPKEPublicKey(gi.GroupContext.CipherSuite, pub) {
		return invalidf("12.4.3.2", "external_pub is not a public key of cipher suite %d", gi.GroupContext.CipherSuite)
	}
	return nil
}
