package mls

import (
	"fmt"
	"strconv"
)

// Identifiers and enumerations shared by the whole package (RFC 9420 §17).

// LeafIndex numbers the leaves of the ratchet tree from the left, from 0.
type LeafIndex uint32

// NodeIndex numbers all nodes of the ratchet tree in array order
// (Appendix C): leaves at even indices, parents at odd ones.
type NodeIndex uint32

// ProtocolVersion is the MLS protocol version (§6).
type ProtocolVersion uint16

const ProtocolVersionMLS10 ProtocolVersion = 1

// ContentType says what a FramedContent carries (§6).
type ContentType uint8

const (
	ContentTypeApplication ContentType = 1
	ContentTypeProposal    ContentType = 2
	ContentTypeCommit      ContentType = 3
)

// String returns the name of ct in §6 ("application", "proposal",
// "commit").
func (ct ContentType) String() string {
	switch ct {
	case ContentTypeApplication:
		return "application"
	case ContentTypeProposal:
		return "proposal"
	case ContentTypeCommit:
		return "commit"
	}
	return "ContentType(" + strconv.Itoa(int(ct)) + ")"
}

// SenderType says who sent a message (§6).
type SenderType uint8

const (
	SenderTypeMember            SenderType = 1
	SenderTypeExternal          SenderType = 2
	SenderTypeNewMemberProposal SenderType = 3
	SenderTypeNewMemberCommit   SenderType = 4
)

// WireFormat is the outer format of an MLSMessage (§6, §17.2).
type WireFormat uint16

const (
	WireFormatPublicMessage  WireFormat = 1
	WireFormatPrivateMessage WireFormat = 2
	WireFormatWelcome        WireFormat = 3
	WireFormatGroupInfo      WireFormat = 4
	WireFormatKeyPackage     WireFormat = 5
)

// String returns the name of the struct wf carries ("PublicMessage", ...).
func (wf WireFormat) String() string {
	switch wf {
	case WireFormatPublicMessage:
		return "PublicMessage"
	case WireFormatPrivateMessage:
		return "PrivateMessage"
	case WireFormatWelcome:
		return "Welcome"
	case WireFormatGroupInfo:
		return "GroupInfo"
	case WireFormatKeyPackage:
		return "KeyPackage"
	}
	return "WireFormat(" + strconv.Itoa(int(wf)) + ")"
}

// ProposalType identifies a Proposal (§12.1, §17.4).
type ProposalType uint16

const (
	ProposalTypeAdd                    ProposalType = 1
	ProposalTypeUpdate                 ProposalType = 2
	ProposalTypeRemove                 ProposalType = 3
	ProposalTypePSK                    ProposalType = 4
	ProposalTypeReInit                 ProposalType = 5
	ProposalTypeExternalInit           ProposalType = 6
	ProposalTypeGroupContextExtensions ProposalType = 7
)

// String returns the name of t in the IANA registry (§17.4), or its
// value in hex for a type RFC 9420 does not define.
func (t ProposalType) String() string {
	switch t {
	case ProposalTypeAdd:
		return "add"
	case ProposalTypeUpdate:
		return "update"
	case ProposalTypeRemove:
		return "remove"
	case ProposalTypePSK:
		return "psk"
	case ProposalTypeReInit:
		return "reinit"
	case ProposalTypeExternalInit:
		return "external_init"
	case ProposalTypeGroupContextExtensions:
		return "group_context_extensions"
	}
	return fmt.Sprintf("0x%04x", uint16(t))
}

// ExtensionType identifies an Extension (§13, §17.3).
type ExtensionType uint16

const (
	ExtensionTypeApplicationID        ExtensionType = 1
	ExtensionTypeRatchetTree          ExtensionType = 2
	ExtensionTypeRequiredCapabilities ExtensionType = 3
	ExtensionTypeExternalPub          ExtensionType = 4
	ExtensionTypeExternalSenders      ExtensionType = 5
)

// String returns the name of t in the IANA registry (§17.3), or
// ExtensionType(n) for one RFC 9420 does not define.
func (t ExtensionType) String() string {
	switch t {
	case ExtensionTypeApplicationID:
		return "application_id"
	case ExtensionTypeRatchetTree:
		return "ratchet_tree"
	case ExtensionTypeRequiredCapabilities:
		return "required_capabilities"
	case ExtensionTypeExternalPub:
		return "external_pub"
	case ExtensionTypeExternalSenders:
		return "external_senders"
	}
	return "ExtensionType(" + strconv.Itoa(int(t)) + ")"
}

// CredentialType identifies a Credential (§5.3, §17.5).
type CredentialType uint16

const (
	CredentialTypeBasic CredentialType = 1
	CredentialTypeX509  CredentialType = 2
)

// LeafNodeSource says how a LeafNode came into the tree (§7.2).
type LeafNodeSource uint8

const (
	LeafNodeSourceKeyPackage LeafNodeSource = 1
	LeafNodeSourceUpdate     LeafNodeSource = 2
	LeafNodeSourceCommit     LeafNodeSource = 3
)

// NodeType distinguishes leaf and parent nodes in a tree encoding (§7.8).
type NodeType uint8

const (
	NodeTypeLeaf   NodeType = 1
	NodeTypeParent NodeType = 2
)

// PSKType says where a pre-shared key comes from (§8.4).
type PSKType uint8

const (
	PSKTypeExternal   PSKType = 1
	PSKTypeResumption PSKType = 2
)

// ResumptionPSKUsage says why a resumption PSK is used (§8.4).
type ResumptionPSKUsage uint8

const (
	ResumptionPSKUsageApplication ResumptionPSKUsage = 1
	ResumptionPSKUsageReInit      ResumptionPSKUsage = 2
	ResumptionPSKUsageBranch      ResumptionPSKUsage = 3
)

// ProposalOrRefType says whether a Commit carries a proposal by value or by
// reference (§12.4).
type ProposalOrRefType uint8

const (
	ProposalOrRefTypeProposal  ProposalOrRefType = 1
	ProposalOrRefTypeReference ProposalOrRefType = 2
)

// CipherSuite identifies an MLS cipher suite (§5.1, §17.1). Its methods,
// in suite.go, provide the cryptographic primitives of the suite.
type CipherSuite uint16

const (
	MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519        CipherSuite = 1
	MLS_128_DHKEMP256_AES128GCM_SHA256_P256             CipherSuite = 2
	MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519 CipherSuite = 3
	MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448            CipherSuite = 4
	MLS_256_DHKEMP521_AES256GCM_SHA512_P521             CipherSuite = 5
	MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448     CipherSuite = 6
	MLS_256_DHKEMP384_AES256GCM_SHA384_P384             CipherSuite = 7
)
