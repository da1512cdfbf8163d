package ds

import (
	"errors"
	"time"
	"unicode/utf8"

	"github.com/mlsds/mlsds/mls"
)

// This file holds what ds needs from the mls package beyond its data
// types: parsing the objects clients send in either of the two accepted
// forms (inside an MLSMessage or bare), and mapping credentials to client
// ids.

// parseKeyPackage decodes an MLSMessage holding a KeyPackage, or a bare
// KeyPackage.
func parseKeyPackage(data []byte) (*mls.KeyPackage, error) {
	if m, err := mls.ParseMLSMessage(data); err == nil {
		if m.WireFormat != mls.WireFormatKeyPackage {
			return nil, invalidf("6", "expected a KeyPackage, got an MLSMessage of wire format %d", m.WireFormat)
		}
		return m.KeyPackage, nil
	}
	kp := new(mls.KeyPackage)
	if err := kp.UnmarshalBinary(data); err != nil {
		return nil, invalidMessage("not an MLSMessage holding a KeyPackage, nor a KeyPackage", err)
	}
	return kp, nil
}

// offeredKeyPackage parses data, the KeyPackage at where in a request,
// and returns it with its ref and the client its credential names.
func offeredKeyPackage(where string, data []byte) (kp *mls.KeyPackage, ref mls.KeyPackageRef, client string, err error) {
	kp, err = parseKeyPackage(data)
	if err != nil {
		return nil, nil, "", invalidMessage(where, err)
	}
	ref, err = kp.Ref()
	if err != nil {
		return nil, nil, "", invalidMessage(where, err)
	}
	client, err = credentialClientID(&kp.LeafNode.Credential)
	if err != nil {
		return nil, nil, "", invalidMessage(where, err)
	}
	return kp, ref, client, nil
}

// parseGroupInfo decodes an MLSMessage holding a GroupInfo, or a bare
// GroupInfo.
func parseGroupInfo(data []byte) (*mls.GroupInfo, error) {
	if m, err := mls.ParseMLSMessage(data); err == nil {
		if m.WireFormat != mls.WireFormatGroupInfo {
			return nil, invalidf("6", "expected a GroupInfo, got an MLSMessage of wire format %d", m.WireFormat)
		}
		return m.GroupInfo, nil
	}
	gi := new(mls.GroupInfo)
	if err := gi.UnmarshalBinary(data); err != nil {
		return nil, invalidMessage("not an MLSMessage holding a GroupInfo, nor a GroupInfo", err)
	}
	return gi, nil
}

// parseWelcome decodes an MLSMessage holding a Welcome.
func parseWelcome(data []byte) (*mls.Welcome, error) {
	m, err := mls.ParseMLSMessage(data)
	if err != nil {
		return nil, invalidMessage("Welcome", err)
	}
	if m.WireFormat != mls.WireFormatWelcome {
		return nil, invalidf("6", "expected an MLSMessage holding a Welcome, got wire format %d", m.WireFormat)
	}
	return m.Welcome, nil
}

// credentialClientID returns the client id a credential names: the
// identity of a basic credential, the client an x509 credential's leaf
// certificate names (x509.go). It verifies nothing: leaves are checked
// when they enter a group (binding.go).
func credentialClientID(c *mls.Credential) (string, error) {
	switch c.CredentialType {
	case mls.CredentialTypeBasic:
		if len(c.Identity) == 0 || !utf8.Valid(c.Identity) {
			return "", invalidf("5.3", "the basic credential's identity must be the client id, a non-empty UTF-8 string")
		}
		return string(c.Identity), nil
	case mls.CredentialTypeX509:
		return x509ClientIDOf(c)
	default:
		return "", invalidf("5.3", "credential type %d is not supported by this Delivery Service; use a basic credential whose identity is the client id, or an x509 one", c.CredentialType)
	}
}

// validateKeyPackage checks a KeyPackage by the rules of §10.1 that need
// no group; the lifetime must cover now and span at most maxLifetime.
func validateKeyPackage(kp *mls.KeyPackage, now time.Time, maxLifetime time.Duration) error {
	if err := mls.ValidateKeyPackage(kp, now, maxLifetime); err != nil {
		return invalidMessage("KeyPackage", err)
	}
	return nil
}

// wrapSection gives a plain error from mls (a bad signature) an RFC
// section; a *mls.ValidationError keeps its own.
func wrapSection(section string, err error) error {
	var ve *mls.ValidationError
	if errors.As(err, &ve) {
		return err
	}
	return &mls.ValidationError{Rule: "invalid signature", Section: section, Err: err}
}

// lifetimeTime converts a §7.2 lifetime bound (seconds) to a time, clamped
// to what a Store can hold.
func lifetimeTime(secs uint64) time.Time {
	const max = 1 << 40 // far beyond any real lifetime, and safe in microseconds
	if secs > max {
		secs = max
	}
	return time.Unix(int64(secs), 0).UTC()
}
