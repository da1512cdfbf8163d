package mls

import (
	"crypto/rand"
	"slices"
)

// This file is about unknown values (§13.4) and GREASE (§13.5).
//
// As a receiver, this package treats a GREASE value like any other value it
// does not know, with no rule of its own: an unknown value in a
// capabilities list is a value the sender supports and nothing else; an
// unknown extension in KeyPackage.extensions or GroupInfo.extensions is
// ignored; an unknown extension in LeafNode.extensions must be listed in
// the leaf's capabilities (§7.3), like every non-default extension.
//
// As a sender, NewKeyPackageWith can put GREASE values into a KeyPackage
// and Group.GroupInfoWith into a GroupInfo, so that peers meet them. The one place this package tells GREASE values
// apart is its own leaf: when it checks what it supports itself (joining a
// group, following a change of the GroupContext extensions), it leaves out
// the GREASE values of its own capabilities, which it lists but does not
// support (§13.5).

// isGREASE reports whether v is one of the values §13.5 reserves for GREASE
// in every registry: 0x0A0A, 0x1A1A, ..., 0xEAEA (0xFAFA is private use).
func isGREASE(v uint16) bool {
	return v&0x0f0f == 0x0a0a && v>>12 == (v>>4)&0xf && v != 0xfafa
}

// greaseValues returns n different GREASE values, chosen at random.
func greaseValues(n int) []uint16 {
	var all []uint16
	for i := uint16(0); i < 15; i++ {
		all = append(all, i<<12|0x0a00|i<<4|0x0a)
	}
	var out []uint16
	for range n {
		var b [1]byte
		rand.Read(b[:])
		i := int(b[0]) % len(all)
		out = append(out, all[i])
		all = slices.Delete(all, i, i+1)
	}
	return out
}

// KeyPackageOptions are the choices of NewKeyPackageWith.
type KeyPackageOptions struct {
	// Grease adds GREASE values (§13.5), as the RFC recommends a client
	// does so that peers that wrongly refuse unknown values show it: one
	// random GREASE value each in the leaf's capabilities.cipher_suites,
	// .proposals and .credentials; two in capabilities.extensions, of
	// which one is the type of an empty extension in LeafNode.extensions
	// and the other of an extension with a few random bytes in
	// KeyPackage.extensions (both listed, as §7.2 and §10 require of a
	// sender). Leaves this member later makes (Update proposals, Commits)
	// keep them, since they copy the capabilities and extensions.
	Grease bool
	// CredentialTypes are listed in the leaf's capabilities.credentials
	// besides the basic type of its own credential (§7.2), so that members
	// with those credentials (x509, §5.3) can be added to groups this
	// member is in: every member must support every credential type in
	// use (§7.3, §12.1.1).
	CredentialTypes []CredentialType
}

// credentials returns capabilities.credentials of a KeyPackage made with
// o: basic first, then o.CredentialTypes, each once.
func (o KeyPackageOptions) credentials() []CredentialType {
	out := []CredentialType{CredentialTypeBasic}
	for _, t := range o.CredentialTypes {
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out
}

// greaseKeyPackage adds the GREASE values KeyPackageOptions.Grease
// describes to kp, before it is signed.
func greaseKeyPackage(kp *KeyPackage) {
	v := greaseValues(5)
	leafExt, kpExt := ExtensionType(v[3]), ExtensionType(v[4])
	caps := &kp.LeafNode.Capabilities
	caps.CipherSuites = append(caps.CipherSuites, CipherSuite(v[0]))
	caps.Proposals = append(caps.Proposals, ProposalType(v[1]))
	caps.Credentials = append(caps.Credentials, CredentialType(v[2]))
	caps.Extensions = append(caps.Extensions, leafExt, kpExt)
	kp.LeafNode.Extensions = append(kp.LeafNode.Extensions, Extension{ExtensionType: leafExt, ExtensionData: []byte{}})
	kp.Extensions = append(kp.Extensions, greaseExtensionOf(kpExt))
}

// greaseExtension returns an extension of a random GREASE type.
func greaseExtension() Extension {
	return greaseExtensionOf(ExtensionType(greaseValues(1)[0]))
}

// greaseExtensionOf returns an extension of type t with 0 to 16 random
// bytes of data, which §13.5 allows in KeyPackage and GroupInfo
// extensions.
func greaseExtensionOf(t ExtensionType) Extension {
	var n [1]byte
	rand.Read(n[:])
	data := make([]byte, n[0]%17)
	rand.Read(data)
	return Extension{ExtensionType: t, ExtensionData: data}
}

// ownCapabilities returns caps without GREASE values: what a client whose
// leaf lists caps actually supports. §13.5 has a client represent its own
// capabilities this way whenever it compares them with what a group uses.
func ownCapabilities(caps *Capabilities) Capabilities {
	return Capabilities{
		Versions:     withoutGREASE(caps.Versions),
		CipherSuites: withoutGREASE(caps.CipherSuites),
		Extensions:   withoutGREASE(caps.Extensions),
		Proposals:    withoutGREASE(caps.Proposals),
		Credentials:  withoutGREASE(caps.Credentials),
	}
}

func withoutGREASE[T ~uint16](list []T) []T {
	return slices.DeleteFunc(slices.Clone(list), func(v T) bool { return isGREASE(uint16(v)) })
}

// checkOwnSupport checks that this client, whose leaf is own, supports the
// GroupContext extensions es: every extension in them (§13.4: a joiner
// must, or it treats the GroupInfo as invalid) and every capability their
// required_capabilities extension requires (§11.1). The GREASE values of
// own's capabilities do not count (§13.5).
func checkOwnSupport(own *LeafNode, es Extensions) error {
	caps := ownCapabilities(&own.Capabilities)
	if t, ok := unsupportedExtension(es, &caps); !ok {
		return invalidf("13.4", "the group's GroupContext has extension type %d, which this client does not support", uint16(t))
	}
	req, err := requiredCapabilitiesOf(es)
	if err != nil {
		return err
	}
	if err := checkRequiredCapabilities(req, &caps); err != nil {
		return &ValidationError{Rule: "this client does not meet the group's required_capabilities", Section: "11.1", Err: err}
	}
	return nil
}
