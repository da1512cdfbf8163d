package mls

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"testing"

	"golang.org/x/crypto/cryptobyte"
)

// wireValue is any struct of the package, seen through its codec.
type wireValue interface {
	marshaler
	unmarshal(s *cryptobyte.String) bool
}

// wireRoundTrip decodes data into v strictly and checks that encoding v gives
// back exactly data.
func wireRoundTrip(v wireValue, data []byte) error {
	if err := decode(data, fmt.Sprintf("%T", v), v.unmarshal); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	out, err := encode(v)
	if err != nil {
		return fmt.Errorf("re-encode: %w", err)
	}
	if !bytes.Equal(out, data) {
		return fmt.Errorf("re-encoding differs\n got  %x\n want %x", out, data)
	}
	return nil
}

type messagesVector struct {
	MLSWelcome                     hexBytes `json:"mls_welcome"`
	MLSGroupInfo                   hexBytes `json:"mls_group_info"`
	MLSKeyPackage                  hexBytes `json:"mls_key_package"`
	RatchetTree                    hexBytes `json:"ratchet_tree"`
	GroupSecrets                   hexBytes `json:"group_secrets"`
	AddProposal                    hexBytes `json:"add_proposal"`
	UpdateProposal                 hexBytes `json:"update_proposal"`
	RemoveProposal                 hexBytes `json:"remove_proposal"`
	PreSharedKeyProposal           hexBytes `json:"pre_shared_key_proposal"`
	ReInitProposal                 hexBytes `json:"re_init_proposal"`
	ExternalInitProposal           hexBytes `json:"external_init_proposal"`
	GroupContextExtensionsProposal hexBytes `json:"group_context_extensions_proposal"`
	Commit                         hexBytes `json:"commit"`
	PublicMessageApplication       hexBytes `json:"public_message_application"`
	PublicMessageProposal          hexBytes `json:"public_message_proposal"`
	PublicMessageCommit            hexBytes `json:"public_message_commit"`
	PrivateMessage                 hexBytes `json:"private_message"`
}

// fields lists the entry's encodings with a fresh value of the type each
// one holds (per the test-vector definitions of mls-implementations).
func (v *messagesVector) fields() []struct {
	name string
	data []byte
	val  wireValue
} {
	return []struct {
		name string
		data []byte
		val  wireValue
	}{
		{"mls_welcome", v.MLSWelcome, new(MLSMessage)},
		{"mls_group_info", v.MLSGroupInfo, new(MLSMessage)},
		{"mls_key_package", v.MLSKeyPackage, new(MLSMessage)},
		{"ratchet_tree", v.RatchetTree, new(RatchetTreeExtension)},
		{"group_secrets", v.GroupSecrets, new(GroupSecrets)},
		{"add_proposal", v.AddProposal, new(Add)},
		{"update_proposal", v.UpdateProposal, new(Update)},
		{"remove_proposal", v.RemoveProposal, new(Remove)},
		{"pre_shared_key_proposal", v.PreSharedKeyProposal, new(PreSharedKey)},
		{"re_init_proposal", v.ReInitProposal, new(ReInit)},
		{"external_init_proposal", v.ExternalInitProposal, new(ExternalInit)},
		{"group_context_extensions_proposal", v.GroupContextExtensionsProposal, new(GroupContextExtensions)},
		{"commit", v.Commit, new(Commit)},
		{"public_message_application", v.PublicMessageApplication, new(MLSMessage)},
		{"public_message_proposal", v.PublicMessageProposal, new(MLSMessage)},
		{"public_message_commit", v.PublicMessageCommit, new(MLSMessage)},
		{"private_message", v.PrivateMessage, new(MLSMessage)},
	}
}

func TestMessagesVectors(t *testing.T) {
	var vectors []messagesVector
	loadVectors(t, "messages.json", &vectors)
	count := newVectorCount("messages.json")
	defer count.report(t)
	wantWireFormat := map[string]WireFormat{
		"mls_welcome":                WireFormatWelcome,
		"mls_group_info":             WireFormatGroupInfo,
		"mls_key_package":            WireFormatKeyPackage,
		"public_message_application": WireFormatPublicMessage,
		"public_message_proposal":    WireFormatPublicMessage,
		"public_message_commit":      WireFormatPublicMessage,
		"private_message":            WireFormatPrivateMessage,
	}
	wantContentType := map[string]ContentType{
		"public_message_application": ContentTypeApplication,
		"public_message_proposal":    ContentTypeProposal,
		"public_message_commit":      ContentTypeCommit,
	}
	for i := range vectors {
		var errs []error
		for _, f := range vectors[i].fields() {
			if len(f.data) == 0 {
				errs = append(errs, fmt.Errorf("%s: missing from the vector file", f.name))
				continue
			}
			if err := wireRoundTrip(f.val, f.data); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", f.name, err))
				continue
			}
			m, isMsg := f.val.(*MLSMessage)
			if !isMsg {
				continue
			}
			if m.WireFormat != wantWireFormat[f.name] {
				errs = append(errs, fmt.Errorf("%s: wire_format %d, want %d", f.name, m.WireFormat, wantWireFormat[f.name]))
			}
			if ct, ok := wantContentType[f.name]; ok && m.PublicMessage.Content.ContentType != ct {
				errs = append(errs, fmt.Errorf("%s: content_type %d, want %d", f.name, m.PublicMessage.Content.ContentType, ct))
			}
			if _, err := ParseMLSMessage(f.data); err != nil {
				errs = append(errs, fmt.Errorf("%s: ParseMLSMessage: %w", f.name, err))
			}
		}
		for _, err := range errs {
			t.Errorf("entry %d: %v", i, err)
		}
		if len(errs) == 0 {
			count.pass()
		}
	}
}

// The vectors of other files exercise the signing, reference and
// transcript inputs defined here against independent implementations.

type messageProtectionWireVector struct {
	CipherSuite             CipherSuite `json:"cipher_suite"`
	GroupID                 hexBytes    `json:"group_id"`
	Epoch                   uint64      `json:"epoch"`
	TreeHash                hexBytes    `json:"tree_hash"`
	ConfirmedTranscriptHash hexBytes    `json:"confirmed_transcript_hash"`
	SignaturePub            hexBytes    `json:"signature_pub"`
	MembershipKey           hexBytes    `json:"membership_key"`
	Proposal                hexBytes    `json:"proposal"`
	ProposalPub             hexBytes    `json:"proposal_pub"`
	Commit                  hexBytes    `json:"commit"`
	CommitPub               hexBytes    `json:"commit_pub"`
}

// TestWireFramedContentTBS checks FramedContentTBS and
// AuthenticatedContentTBM against the signatures and membership tags of
// the PublicMessages in message-protection.json.
func TestWireFramedContentTBS(t *testing.T) {
	var vectors []messageProtectionWireVector
	loadVectors(t, "message-protection.json", &vectors)
	for i, v := range vectors {
		ctx := &GroupContext{
			Version:                 ProtocolVersionMLS10,
			CipherSuite:             v.CipherSuite,
			GroupID:                 v.GroupID,
			Epoch:                   v.Epoch,
			TreeHash:                v.TreeHash,
			ConfirmedTranscriptHash: v.ConfirmedTranscriptHash,
		}
		for _, c := range []struct {
			name    string
			msg     []byte
			content []byte
		}{{"proposal_pub", v.ProposalPub, v.Proposal}, {"commit_pub", v.CommitPub, v.Commit}} {
			m, err := ParseMLSMessage(c.msg)
			if err != nil {
				t.Errorf("entry %d %s: %v", i, c.name, err)
				continue
			}
			pm := m.PublicMessage
			if pm == nil {
				t.Errorf("entry %d %s: wire format %d, want public_message", i, c.name, m.WireFormat)
				continue
			}
			var inner []byte
			if pm.Content.Proposal != nil {
				inner, err = pm.Content.Proposal.MarshalBinary()
			} else {
				inner, err = pm.Content.Commit.MarshalBinary()
			}
			if err != nil || !bytes.Equal(inner, c.content) {
				t.Errorf("entry %d %s: carried content %x (%v), want %x", i, c.name, inner, err, c.content)
			}
			ac := pm.AuthenticatedContent()
			if err := ac.VerifySignature(v.CipherSuite, v.SignaturePub, ctx); err != nil {
				t.Errorf("entry %d %s: signature: %v", i, c.name, err)
			}
			if tag := v.CipherSuite.MAC(v.MembershipKey, ac.TBM(ctx)); !bytes.Equal(tag, pm.MembershipTag) {
				t.Errorf("entry %d %s: membership tag %x, want %x", i, c.name, tag, pm.MembershipTag)
			}
			// A changed group context must break the signature.
			other := *ctx
			other.Epoch++
			if err := ac.VerifySignature(v.CipherSuite, v.SignaturePub, &other); !errors.Is(err, ErrInvalidSignature) {
				t.Errorf("entry %d %s: signature verified under the wrong epoch (err %v)", i, c.name, err)
			}
		}
	}
}

type transcriptHashesWireVector struct {
	CipherSuite                 CipherSuite `json:"cipher_suite"`
	ConfirmationKey             hexBytes    `json:"confirmation_key"`
	AuthenticatedContent        hexBytes    `json:"authenticated_content"`
	InterimTranscriptHashBefore hexBytes    `json:"interim_transcript_hash_before"`
	ConfirmedTranscriptHashAft  hexBytes    `json:"confirmed_transcript_hash_after"`
	InterimTranscriptHashAfter  hexBytes    `json:"interim_transcript_hash_after"`
}

// TestWireTranscriptHashInputs checks the AuthenticatedContent codec and
// the §8.2 transcript hash inputs against transcript-hashes.json.
func TestWireTranscriptHashInputs(t *testing.T) {
	var vectors []transcriptHashesWireVector
	loadVectors(t, "transcript-hashes.json", &vectors)
	for i, v := range vectors {
		var ac AuthenticatedContent
		if err := wireRoundTrip(&ac, v.AuthenticatedContent); err != nil {
			t.Errorf("entry %d: authenticated_content: %v", i, err)
			continue
		}
		cs := v.CipherSuite
		confirmed := cs.Hash(append(append([]byte{}, v.InterimTranscriptHashBefore...), ConfirmedTranscriptHashInput(&ac)...))
		if !bytes.Equal(confirmed, v.ConfirmedTranscriptHashAft) {
			t.Errorf("entry %d: confirmed transcript hash %x, want %x", i, confirmed, v.ConfirmedTranscriptHashAft)
		}
		if tag := cs.MAC(v.ConfirmationKey, confirmed); !bytes.Equal(tag, ac.Auth.ConfirmationTag) {
			t.Errorf("entry %d: confirmation tag %x, want %x", i, tag, ac.Auth.ConfirmationTag)
		}
		interim := cs.Hash(append(append([]byte{}, confirmed...), InterimTranscriptHashInput(ac.Auth.ConfirmationTag)...))
		if !bytes.Equal(interim, v.InterimTranscriptHashAfter) {
			t.Errorf("entry %d: interim transcript hash %x, want %x", i, interim, v.InterimTranscriptHashAfter)
		}
	}
}

type welcomeWireVector struct {
	CipherSuite CipherSuite `json:"cipher_suite"`
	KeyPackage  hexBytes    `json:"key_package"`
	Welcome     hexBytes    `json:"welcome"`
}

// TestWireKeyPackageRef checks KeyPackage.Ref, the KeyPackage and LeafNode
// signatures and Welcome.Joiners against welcome.json, whose Welcome is
// addressed to the KeyPackage of the same entry.
func TestWireKeyPackageRef(t *testing.T) {
	var vectors []welcomeWireVector
	loadVectors(t, "welcome.json", &vectors)
	for i, v := range vectors {
		kpMsg, err := ParseMLSMessage(v.KeyPackage)
		if err != nil || kpMsg.KeyPackage == nil {
			t.Errorf("entry %d: key_package: %v", i, err)
			continue
		}
		wMsg, err := ParseMLSMessage(v.Welcome)
		if err != nil || wMsg.Welcome == nil {
			t.Errorf("entry %d: welcome: %v", i, err)
			continue
		}
		kp := kpMsg.KeyPackage
		if kp.CipherSuite != v.CipherSuite || wMsg.Welcome.CipherSuite != v.CipherSuite {
			t.Errorf("entry %d: cipher suites %d and %d, want %d", i, kp.CipherSuite, wMsg.Welcome.CipherSuite, v.CipherSuite)
		}
		ref, err := kp.Ref()
		if err != nil {
			t.Errorf("entry %d: Ref: %v", i, err)
			continue
		}
		found := false
		for _, j := range wMsg.Welcome.Joiners() {
			found = found || bytes.Equal(j, ref)
		}
		if !found {
			t.Errorf("entry %d: KeyPackageRef %x is not among the Welcome's joiners %x", i, ref, wMsg.Welcome.Joiners())
		}
		if err := kp.VerifySignature(); err != nil {
			t.Errorf("entry %d: KeyPackage signature: %v", i, err)
		}
		if err := kp.LeafNode.VerifySignature(kp.CipherSuite, nil, 0); err != nil {
			t.Errorf("entry %d: LeafNode signature: %v", i, err)
		}
		kp.InitKey = append([]byte{}, kp.InitKey...)
		kp.InitKey[0] ^= 1
		if err := kp.VerifySignature(); !errors.Is(err, ErrInvalidSignature) {
			t.Errorf("entry %d: KeyPackage signature verified after changing init_key (err %v)", i, err)
		}
	}
}

// Fixtures for the tests below: small valid values of each type.

func wireTestLeaf(src LeafNodeSource) LeafNode {
	ln := LeafNode{
		EncryptionKey:  []byte("e"),
		SignatureKey:   []byte("s"),
		Credential:     Credential{CredentialType: CredentialTypeBasic, Identity: []byte("i")},
		LeafNodeSource: src,
		Signature:      []byte("sig"),
	}
	switch src {
	case LeafNodeSourceKeyPackage:
		ln.Lifetime = &Lifetime{NotBefore: 1, NotAfter: 2}
	case LeafNodeSourceCommit:
		ln.ParentHash = []byte("ph")
	}
	return ln
}

func wireTestPublicMessage(sender Sender, ct ContentType) *MLSMessage {
	pm := &PublicMessage{
		Content: FramedContent{GroupID: []byte("g"), Sender: sender, ContentType: ct},
		Auth:    FramedContentAuthData{Signature: []byte("S")},
	}
	switch ct {
	case ContentTypeApplication:
		pm.Content.Application = []byte("hi")
	case ContentTypeProposal:
		pm.Content.Proposal = &Proposal{ProposalType: ProposalTypeRemove, Remove: &Remove{Removed: 7}}
	case ContentTypeCommit:
		pm.Content.Commit = &Commit{}
		pm.Auth.ConfirmationTag = []byte("C")
	}
	if sender.SenderType == SenderTypeMember {
		pm.MembershipTag = []byte("M")
	}
	return &MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatPublicMessage, PublicMessage: pm}
}

func mustMarshal(t *testing.T, v marshaler) []byte {
	t.Helper()
	out, err := encode(v)
	if err != nil {
		t.Fatalf("encoding %T: %v", v, err)
	}
	return out
}

// patched returns a copy of data with the bytes at off replaced by b.
func patched(data []byte, off int, b ...byte) []byte {
	out := append([]byte{}, data...)
	copy(out[off:], b)
	return out
}

// wantDecodeError decodes data into v and fails unless decoding fails with
// an error wrapping ErrDecode.
func wantDecodeError(t *testing.T, name string, v wireValue, data []byte) {
	t.Helper()
	err := decode(data, name, v.unmarshal)
	if err == nil {
		t.Errorf("%s: decoded %x without error", name, data)
	} else if !errors.Is(err, ErrDecode) {
		t.Errorf("%s: error %v does not wrap ErrDecode", name, err)
	}
}

// TestWireClosedEnums checks that out-of-range values of the enumerations
// that select a layout are rejected (§6, §7.2, §7.8, §8.4, §12.4).
func TestWireClosedEnums(t *testing.T) {
	// A member-sent application message; its layout is
	// version(2) wire_format(2) group_id(1+1) epoch(8) sender_type(1)
	// leaf_index(4) authenticated_data(1) content_type(1) ...
	msg := mustMarshal(t, wireTestPublicMessage(Sender{SenderType: SenderTypeMember}, ContentTypeApplication))
	if err := wireRoundTrip(new(MLSMessage), msg); err != nil {
		t.Fatalf("fixture: %v", err)
	}
	for _, c := range []struct {
		name string
		off  int
		vals []byte
	}{
		{"version", 0, []byte{0, 2}},
		{"wire_format", 2, []byte{0, 6, 0xff}},
		{"sender_type", 14, []byte{0, 5, 0xff}},
		{"content_type", 20, []byte{0, 4, 0xff}},
	} {
		for _, val := range c.vals {
			bad := patched(msg, c.off, val)
			if c.name == "version" || c.name == "wire_format" { // uint16 fields
				bad = patched(msg, c.off, 0, val)
			}
			wantDecodeError(t, fmt.Sprintf("MLSMessage with %s %d", c.name, val), new(MLSMessage), bad)
			if _, err := ParseMLSMessage(bad); !errors.Is(err, ErrDecode) {
				t.Errorf("ParseMLSMessage with %s %d: err %v, want ErrDecode", c.name, val, err)
			}
		}
	}

	priv := mustMarshal(t, &PrivateMessage{GroupID: []byte("g"), ContentType: ContentTypeApplication})
	for _, ct := range []byte{0, 4} {
		wantDecodeError(t, fmt.Sprintf("PrivateMessage with content_type %d", ct), new(PrivateMessage), patched(priv, 10, ct))
	}

	// LeafNode: encryption_key(2) signature_key(2) credential(4)
	// capabilities(5) leaf_node_source(1).
	leaf := wireTestLeaf(LeafNodeSourceUpdate)
	leafEnc := mustMarshal(t, &leaf)
	if leafEnc[13] != byte(LeafNodeSourceUpdate) {
		t.Fatalf("fixture: leaf_node_source not at offset 13 in %x", leafEnc)
	}
	for _, src := range []byte{0, 4, 0xff} {
		wantDecodeError(t, fmt.Sprintf("LeafNode with source %d", src), new(LeafNode), patched(leafEnc, 13, src))
	}

	// Node type, behind the vector length and the presence octet.
	tree := mustMarshal(t, &RatchetTreeExtension{Nodes: []*Node{{Leaf: &leaf}}})
	for _, nt := range []byte{0, 3} {
		wantDecodeError(t, fmt.Sprintf("Node with node_type %d", nt), new(RatchetTreeExtension), patched(tree, 2, nt))
	}

	psk := mustMarshal(t, &PreSharedKeyID{PSKType: PSKTypeExternal, PSKID: []byte("id"), PSKNonce: []byte("n")})
	for _, pt := range []byte{0, 3} {
		wantDecodeError(t, fmt.Sprintf("PreSharedKeyID with psktype %d", pt), new(PreSharedKeyID), patched(psk, 0, pt))
	}

	commit := mustMarshal(t, &Commit{Proposals: []ProposalOrRef{{Type: ProposalOrRefTypeReference, Reference: ProposalRef("r")}}})
	for _, pt := range []byte{0, 3} {
		wantDecodeError(t, fmt.Sprintf("ProposalOrRef with type %d", pt), new(Commit), patched(commit, 1, pt))
	}

	wantDecodeError(t, "Proposal of reserved type 0", new(Proposal), []byte{0, 0, 0, 0, 0, 1})
	wantDecodeError(t, "Credential of unknown type", new(Credential), []byte{0, 3, 1, 'x'})
	wantDecodeError(t, "Credential of type 0", new(Credential), []byte{0, 0, 1, 'x'})
}

// TestWireOptionalPresence checks that a presence octet other than 0 or 1
// is rejected wherever an optional<T> appears (§2.1.1).
func TestWireOptionalPresence(t *testing.T) {
	commit := mustMarshal(t, &Commit{})
	wantDecodeError(t, "Commit path presence 2", new(Commit), patched(commit, 1, 2))
	gs := mustMarshal(t, &GroupSecrets{JoinerSecret: []byte("j")})
	wantDecodeError(t, "GroupSecrets path_secret presence 2", new(GroupSecrets), patched(gs, 2, 2))
	leaf := wireTestLeaf(LeafNodeSourceKeyPackage)
	tree := mustMarshal(t, &RatchetTreeExtension{Nodes: []*Node{{Leaf: &leaf}}})
	wantDecodeError(t, "ratchet_tree presence 2", new(RatchetTreeExtension), patched(tree, 1, 2))

	// An empty path secret that is present stays distinct from an absent one.
	withEmpty := mustMarshal(t, &GroupSecrets{JoinerSecret: []byte("j"), PathSecret: []byte{}})
	var got GroupSecrets
	if err := got.UnmarshalBinary(withEmpty); err != nil || got.PathSecret == nil {
		t.Errorf("present empty path_secret decoded as %v (err %v)", got.PathSecret, err)
	}
	if bytes.Equal(withEmpty, gs) {
		t.Errorf("present empty and absent path_secret encode the same")
	}
}

// TestWireConditionalTags checks that membership_tag is carried exactly
// for member senders and confirmation_tag exactly for commits (§6.1, §6.2).
func TestWireConditionalTags(t *testing.T) {
	senders := []Sender{
		{SenderType: SenderTypeMember, LeafIndex: 3},
		{SenderType: SenderTypeExternal, SenderIndex: 1},
		{SenderType: SenderTypeNewMemberProposal},
		{SenderType: SenderTypeNewMemberCommit},
	}
	for _, sender := range senders {
		for _, ct := range []ContentType{ContentTypeApplication, ContentTypeProposal, ContentTypeCommit} {
			name := fmt.Sprintf("sender %d content %d", sender.SenderType, ct)
			m := wireTestPublicMessage(sender, ct)
			enc := mustMarshal(t, m)
			var got MLSMessage
			if err := wireRoundTrip(&got, enc); err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			pm := got.PublicMessage
			if hasTag := pm.MembershipTag != nil; hasTag != (sender.SenderType == SenderTypeMember) {
				t.Errorf("%s: decoded membership tag %q", name, pm.MembershipTag)
			}
			if hasTag := pm.Auth.ConfirmationTag != nil; hasTag != (ct == ContentTypeCommit) {
				t.Errorf("%s: decoded confirmation tag %q", name, pm.Auth.ConfirmationTag)
			}
			// One byte more (a tag that should not be there) or one less
			// (a tag cut short) is malformed.
			wantDecodeError(t, name+" plus a byte", new(MLSMessage), append(append([]byte{}, enc...), 0))
			wantDecodeError(t, name+" minus a byte", new(MLSMessage), enc[:len(enc)-1])

			if sender.SenderType != SenderTypeMember {
				m.PublicMessage.MembershipTag = []byte("M")
				if _, err := m.MarshalBinary(); err == nil {
					t.Errorf("%s: encoded a membership tag for a non-member sender", name)
				}
				m.PublicMessage.MembershipTag = nil
			}
			if ct != ContentTypeCommit {
				m.PublicMessage.Auth.ConfirmationTag = []byte("C")
				if _, err := m.MarshalBinary(); err == nil {
					t.Errorf("%s: encoded a confirmation tag for a non-commit", name)
				}
			}
		}
	}
}

// TestWireUnknownProposals checks the handling of proposal types that RFC
// 9420 does not define: carried opaque where their end is known, rejected
// elsewhere (see Proposal).
func TestWireUnknownProposals(t *testing.T) {
	unknown := &Proposal{ProposalType: 0x0a0a, Unknown: []byte("opaque body")}
	enc, err := unknown.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var p Proposal
	if err := p.UnmarshalBinary(enc); err != nil || p.ProposalType != 0x0a0a || string(p.Unknown) != "opaque body" {
		t.Errorf("unknown proposal decoded as %+v (err %v)", p, err)
	}

	remove := ProposalOrRef{Type: ProposalOrRefTypeProposal, Proposal: &Proposal{ProposalType: ProposalTypeRemove, Remove: &Remove{Removed: 1}}}
	last := ProposalOrRef{Type: ProposalOrRefTypeProposal, Proposal: unknown}
	c := &Commit{Proposals: []ProposalOrRef{remove, last}, Path: &UpdatePath{LeafNode: wireTestLeaf(LeafNodeSourceCommit)}}
	cEnc, err := c.MarshalBinary()
	if err != nil {
		t.Fatalf("Commit ending in an unknown proposal: %v", err)
	}
	var got Commit
	if err := wireRoundTrip(&got, cEnc); err != nil {
		t.Errorf("Commit ending in an unknown proposal: %v", err)
	} else if len(got.Proposals) != 2 || string(got.Proposals[1].Proposal.Unknown) != "opaque body" || got.Path == nil {
		t.Errorf("Commit ending in an unknown proposal decoded as %+v", got)
	}

	c.Proposals = []ProposalOrRef{last, remove}
	if _, err := c.MarshalBinary(); err == nil {
		t.Errorf("encoded a Commit with an unknown proposal before the last position")
	}

	m := wireTestPublicMessage(Sender{SenderType: SenderTypeMember}, ContentTypeProposal)
	mEnc := mustMarshal(t, m)
	m.PublicMessage.Content.Proposal = unknown
	if _, err := m.MarshalBinary(); err == nil {
		t.Errorf("encoded a PublicMessage carrying an unknown proposal")
	}
	// Change the Remove's type (after the 20 bytes of header) to an
	// unknown one: the decoder cannot find the auth data and must fail.
	if mEnc[21] != 0 || mEnc[22] != byte(ProposalTypeRemove) {
		t.Fatalf("fixture: proposal type not at offset 21 in %x", mEnc)
	}
	wantDecodeError(t, "PublicMessage with unknown proposal", new(MLSMessage), patched(mEnc, 21, 0x0a, 0x0a))
}

// TestWireRatchetTreeShape checks the §12.4.3.3 shape rules.
func TestWireRatchetTreeShape(t *testing.T) {
	leaf := wireTestLeaf(LeafNodeSourceKeyPackage)
	leafNode := &Node{Leaf: &leaf}
	parentNode := &Node{Parent: &ParentNode{EncryptionKey: []byte("p"), UnmergedLeaves: []LeafIndex{0}}}
	good := &RatchetTreeExtension{Nodes: []*Node{leafNode, parentNode, nil, nil, leafNode}}
	enc := mustMarshal(t, good)
	var got RatchetTreeExtension
	if err := got.UnmarshalBinary(enc); err != nil {
		t.Fatalf("valid tree: %v", err)
	}
	if len(got.Nodes) != 5 || got.Nodes[2] != nil || got.Nodes[1].Parent == nil || got.Nodes[1].Parent.UnmergedLeaves[0] != 0 {
		t.Errorf("valid tree decoded as %+v", got.Nodes)
	}

	for name, nodes := range map[string][]*Node{
		"empty":             {},
		"trailing blank":    {leafNode, nil},
		"all blank":         {nil},
		"parent at leaf":    {parentNode},
		"leaf at parent":    {leafNode, leafNode, leafNode},
		"node of no type":   {{}},
		"node of two types": {{Leaf: &leaf, Parent: parentNode.Parent}},
	} {
		r := &RatchetTreeExtension{Nodes: nodes}
		if _, err := r.MarshalBinary(); err == nil {
			t.Errorf("%s: encoded", name)
		}
		if name == "node of two types" {
			continue // has no encoding to decode
		}
		// Build the same list by hand; the decoder must reject it too.
		b := cryptobyte.NewBuilder(nil)
		addVector(b, func(b *cryptobyte.Builder) {
			for _, n := range nodes {
				addOptional(b, n != nil)
				switch {
				case n == nil:
				case n.Leaf != nil:
					b.AddUint8(uint8(NodeTypeLeaf))
					n.Leaf.marshal(b)
				case n.Parent != nil:
					b.AddUint8(uint8(NodeTypeParent))
					n.Parent.marshal(b)
				default:
					b.AddUint8(0)
				}
			}
		})
		raw := b.BytesOrPanic()
		if err := new(RatchetTreeExtension).UnmarshalBinary(raw); !errors.Is(err, ErrDecode) {
			t.Errorf("%s: decoding %x gave %v, want ErrDecode", name, raw, err)
		}
	}
}

// TestWireEncodeRejectsInconsistentValues checks that values whose fields
// disagree with their type tags are not encoded.
func TestWireEncodeRejectsInconsistentValues(t *testing.T) {
	kpLeafWithoutLifetime := wireTestLeaf(LeafNodeSourceKeyPackage)
	kpLeafWithoutLifetime.Lifetime = nil
	updateWithLifetime := wireTestLeaf(LeafNodeSourceUpdate)
	updateWithLifetime.Lifetime = &Lifetime{}
	updateWithParentHash := wireTestLeaf(LeafNodeSourceUpdate)
	updateWithParentHash.ParentHash = []byte("ph")
	unknownSource := wireTestLeaf(LeafNodeSourceUpdate)
	unknownSource.LeafNodeSource = 9
	for name, v := range map[string]marshaler{
		"key_package leaf without lifetime":    &kpLeafWithoutLifetime,
		"update leaf with lifetime":            &updateWithLifetime,
		"update leaf with parent hash":         &updateWithParentHash,
		"leaf of unknown source":               &unknownSource,
		"credential of unknown type":           &Credential{CredentialType: 7},
		"basic credential with certificates":   &Credential{CredentialType: CredentialTypeBasic, Certificates: [][]byte{{1}}},
		"proposal without body":                &Proposal{ProposalType: ProposalTypeAdd},
		"proposal with body of other type":     &Proposal{ProposalType: ProposalTypeAdd, Remove: &Remove{}},
		"proposal of type 0":                   &Proposal{},
		"proposal-or-ref without proposal":     &ProposalOrRef{Type: ProposalOrRefTypeProposal},
		"proposal-or-ref of unknown type":      &ProposalOrRef{Type: 3},
		"psk of unknown type":                  &PreSharedKeyID{PSKType: 3},
		"sender of unknown type":               &Sender{SenderType: 5},
		"framed content of unknown type":       &FramedContent{Sender: Sender{SenderType: SenderTypeMember}, ContentType: 4},
		"framed commit without commit":         &FramedContent{Sender: Sender{SenderType: SenderTypeMember}, ContentType: ContentTypeCommit},
		"private message of unknown type":      &PrivateMessage{ContentType: 0},
		"message without version":              &MLSMessage{WireFormat: WireFormatWelcome, Welcome: &Welcome{}},
		"message without body":                 &MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatWelcome},
		"message with body of other type":      &MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatWelcome, GroupInfo: &GroupInfo{}},
		"message of unknown wire format":       &MLSMessage{Version: ProtocolVersionMLS10, WireFormat: 6},
		"node of no type":                      &Node{},
		"key package with an invalid leaf":     &KeyPackage{LeafNode: unknownSource},
		"external senders with bad credential": &ExternalSenders{{Credential: Credential{CredentialType: 9}}},
	} {
		if out, err := encode(v); err == nil {
			t.Errorf("%s: encoded as %x", name, out)
		}
	}
}

// TestWireStrictDecoding checks, on the vector encodings, that trailing
// bytes and every truncation are rejected with an error that wraps
// ErrDecode and names the type.
func TestWireStrictDecoding(t *testing.T) {
	var vectors []messagesVector
	loadVectors(t, "messages.json", &vectors)
	if len(vectors) > 8 {
		vectors = vectors[:8]
	}
	for i := range vectors {
		v := &vectors[i]
		for _, f := range v.fields() {
			if err := decode(append(append([]byte{}, f.data...), 0), "X", f.val.unmarshal); !errors.Is(err, ErrDecode) {
				t.Errorf("entry %d %s with a trailing byte: err %v", i, f.name, err)
			}
			for n := 0; n < len(f.data); n++ {
				if err := decode(f.data[:n], "X", f.val.unmarshal); err == nil {
					t.Errorf("entry %d %s: decoded its first %d of %d bytes", i, f.name, n, len(f.data))
					break
				}
			}
		}
	}

	// The exported entry points name the type that failed.
	kp := vectors[0].MLSKeyPackage
	for name, f := range map[string]func([]byte) error{
		"MLSMessage carrying a KeyPackage": new(MLSMessage).UnmarshalBinary,
		"GroupSecrets":                     new(GroupSecrets).UnmarshalBinary,
		"RatchetTreeExtension":             new(RatchetTreeExtension).UnmarshalBinary,
	} {
		data := kp
		switch name {
		case "GroupSecrets":
			data = vectors[0].GroupSecrets
		case "RatchetTreeExtension":
			data = vectors[0].RatchetTree
		}
		err := f(append(append([]byte{}, data...), 0xAA))
		if !errors.Is(err, ErrDecode) || !bytes.Contains([]byte(err.Error()), []byte(name)) {
			t.Errorf("%s with a trailing byte: err %v, want ErrDecode naming %q", name, err, name)
		}
	}
	if _, err := ParseMLSMessage([]byte{0, 2, 0, 1}); err == nil || !bytes.Contains([]byte(err.Error()), []byte("version 2")) {
		t.Errorf("ParseMLSMessage of version 2: err %v, want one naming the version", err)
	}
	if _, err := ParseMLSMessage([]byte{0, 1, 0, 9}); err == nil || !bytes.Contains([]byte(err.Error()), []byte("wire_format 9")) {
		t.Errorf("ParseMLSMessage of wire format 9: err %v, want one naming the wire format", err)
	}
}

// TestWireHostileLengths checks that a length prefix larger than the input
// is rejected without allocating memory in proportion to it.
func TestWireHostileLengths(t *testing.T) {
	inputs := map[string][]byte{
		"group_id of 2^30-1 bytes":           {0, 1, 0, 1, 0xbf, 0xff, 0xff, 0xff, 1, 2, 3},
		"welcome secrets of 2^30-1 bytes":    {0, 1, 0, 3, 0, 1, 0xbf, 0xff, 0xff, 0xff, 0},
		"ratchet tree of 2^30-1 bytes":       {0xbf, 0xff, 0xff, 0xff, 1, 1},
		"capabilities of 2^14-1 bytes":       {1, 'e', 1, 's', 0, 1, 1, 'i', 0x7f, 0xff, 0, 1},
		"certificate list of 2^30-1 bytes":   {0, 2, 0xbf, 0xff, 0xff, 0xff, 0x3f},
		"commit proposals of 2^30-1 bytes":   {0xbf, 0xff, 0xff, 0xff, 1, 0, 1},
		"group secrets psks of 2^30-1 bytes": {0, 0, 0xbf, 0xff, 0xff, 0xff, 1},
	}
	targets := map[string]wireValue{
		"group_id of 2^30-1 bytes":           new(MLSMessage),
		"welcome secrets of 2^30-1 bytes":    new(MLSMessage),
		"ratchet tree of 2^30-1 bytes":       new(RatchetTreeExtension),
		"capabilities of 2^14-1 bytes":       new(LeafNode),
		"certificate list of 2^30-1 bytes":   new(Credential),
		"commit proposals of 2^30-1 bytes":   new(Commit),
		"group secrets psks of 2^30-1 bytes": new(GroupSecrets),
	}
	for name, data := range inputs {
		v := targets[name]
		wantDecodeError(t, name, v, data)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		const runs = 100
		for range runs {
			_ = decode(data, name, v.unmarshal)
		}
		runtime.ReadMemStats(&after)
		if perRun := (after.TotalAlloc - before.TotalAlloc) / runs; perRun > 4096 {
			t.Errorf("%s: %d bytes allocated per decode of %d input bytes", name, perRun, len(data))
		}
	}
}

// TestWireSignatures signs and verifies each signed structure, and checks
// that the signature binds the context it is computed in.
func TestWireSignatures(t *testing.T) {
	for _, cs := range []CipherSuite{MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, MLS_128_DHKEMP256_AES128GCM_SHA256_P256} {
		priv, pub, err := cs.GenerateSignatureKeyPair()
		if err != nil {
			t.Fatal(err)
		}

		leaf := wireTestLeaf(LeafNodeSourceCommit)
		leaf.SignatureKey = pub
		if err := leaf.Sign(cs, priv, []byte("group"), 4); err != nil {
			t.Fatalf("%v: LeafNode.Sign: %v", cs, err)
		}
		if err := leaf.VerifySignature(cs, []byte("group"), 4); err != nil {
			t.Errorf("%v: LeafNode: %v", cs, err)
		}
		if err := leaf.VerifySignature(cs, []byte("group"), 5); !errors.Is(err, ErrInvalidSignature) {
			t.Errorf("%v: commit LeafNode verified at another leaf index (err %v)", cs, err)
		}
		if err := leaf.VerifySignature(cs, []byte("other"), 4); !errors.Is(err, ErrInvalidSignature) {
			t.Errorf("%v: commit LeafNode verified in another group (err %v)", cs, err)
		}

		kpLeaf := wireTestLeaf(LeafNodeSourceKeyPackage)
		kpLeaf.SignatureKey = pub
		if err := kpLeaf.Sign(cs, priv, nil, 0); err != nil {
			t.Fatal(err)
		}
		if err := kpLeaf.VerifySignature(cs, []byte("any group"), 9); err != nil {
			t.Errorf("%v: key_package LeafNode depends on group and index: %v", cs, err)
		}
		kp := &KeyPackage{Version: ProtocolVersionMLS10, CipherSuite: cs, InitKey: []byte("init"), LeafNode: kpLeaf}
		if err := kp.Sign(priv); err != nil {
			t.Fatal(err)
		}
		if err := kp.VerifySignature(); err != nil {
			t.Errorf("%v: KeyPackage: %v", cs, err)
		}
		ref1, err1 := kp.Ref()
		kp.Extensions = Extensions{{ExtensionType: 0xff00, ExtensionData: []byte{1}}}
		if err := kp.VerifySignature(); !errors.Is(err, ErrInvalidSignature) {
			t.Errorf("%v: KeyPackage verified after adding an extension (err %v)", cs, err)
		}
		ref2, err2 := kp.Ref()
		if err1 != nil || err2 != nil || len(ref1) != cs.HashSize() || bytes.Equal(ref1, ref2) {
			t.Errorf("%v: KeyPackage refs %x (%v), %x (%v)", cs, ref1, err1, ref2, err2)
		}

		gi := &GroupInfo{
			GroupContext:    GroupContext{Version: ProtocolVersionMLS10, CipherSuite: cs, GroupID: []byte("g"), Epoch: 3},
			ConfirmationTag: []byte("tag"),
			Signer:          2,
		}
		if err := gi.Sign(priv); err != nil {
			t.Fatal(err)
		}
		if err := gi.VerifySignature(pub); err != nil {
			t.Errorf("%v: GroupInfo: %v", cs, err)
		}
		gi.Signer = 1
		if err := gi.VerifySignature(pub); !errors.Is(err, ErrInvalidSignature) {
			t.Errorf("%v: GroupInfo verified with another signer (err %v)", cs, err)
		}

		ctx := &gi.GroupContext
		ac := wireTestPublicMessage(Sender{SenderType: SenderTypeMember, LeafIndex: 2}, ContentTypeCommit).PublicMessage.AuthenticatedContent()
		if err := ac.Sign(cs, priv, nil); err == nil {
			t.Errorf("%v: signed a member's content without a group context", cs)
		}
		if err := ac.Sign(cs, priv, ctx); err != nil {
			t.Fatal(err)
		}
		if err := ac.VerifySignature(cs, pub, ctx); err != nil {
			t.Errorf("%v: AuthenticatedContent: %v", cs, err)
		}
		ac.WireFormat = WireFormatPrivateMessage
		if err := ac.VerifySignature(cs, pub, ctx); !errors.Is(err, ErrInvalidSignature) {
			t.Errorf("%v: content verified under another wire format (err %v)", cs, err)
		}
		if _, err := ac.ProposalRef(cs); err == nil {
			t.Errorf("%v: ProposalRef of a commit", cs)
		}

		ext := wireTestPublicMessage(Sender{SenderType: SenderTypeExternal, SenderIndex: 0}, ContentTypeProposal).PublicMessage.AuthenticatedContent()
		if err := ext.Sign(cs, priv, nil); err != nil {
			t.Errorf("%v: external sender needs no group context: %v", cs, err)
		}
		if err := ext.VerifySignature(cs, pub, ctx); err != nil {
			t.Errorf("%v: external sender's signature depends on the group context: %v", cs, err)
		}
		r1, err := ext.ProposalRef(cs)
		if err != nil || len(r1) != cs.HashSize() {
			t.Errorf("%v: ProposalRef: %x, %v", cs, r1, err)
		}
		ext.Content.Proposal.Remove.Removed++
		if r2, _ := ext.ProposalRef(cs); bytes.Equal(r1, r2) {
			t.Errorf("%v: ProposalRef does not depend on the proposal", cs)
		}
	}
}

// TestWireExtensions covers the typed extension payloads and lookups.
func TestWireExtensions(t *testing.T) {
	senders := ExternalSenders{
		{SignatureKey: []byte("k1"), Credential: Credential{CredentialType: CredentialTypeBasic, Identity: []byte("ds")}},
		{SignatureKey: []byte("k2"), Credential: Credential{CredentialType: CredentialTypeX509, Certificates: [][]byte{[]byte("c1"), []byte("c2")}}},
	}
	rc := &RequiredCapabilities{ExtensionTypes: []ExtensionType{ExtensionTypeExternalSenders}, ProposalTypes: []ProposalType{0x0a0a}, CredentialTypes: []CredentialType{CredentialTypeX509}}
	pub := &ExternalPub{PublicKey: []byte("hpke")}
	app := &ApplicationID{ID: []byte("app")}
	for name, v := range map[string]interface {
		wireValue
		MarshalBinary() ([]byte, error)
	}{"ExternalSenders": &senders, "RequiredCapabilities": rc, "ExternalPub": pub, "ApplicationID": app} {
		data, err := v.MarshalBinary()
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		fresh := map[string]wireValue{
			"ExternalSenders": new(ExternalSenders), "RequiredCapabilities": new(RequiredCapabilities),
			"ExternalPub": new(ExternalPub), "ApplicationID": new(ApplicationID),
		}[name]
		if err := wireRoundTrip(fresh, data); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if fmt.Sprint(fresh) != fmt.Sprint(v) {
			t.Errorf("%s: decoded %v, want %v", name, fresh, v)
		}
	}
	// A u16 list of odd length is malformed.
	wantDecodeError(t, "RequiredCapabilities with an odd-length list", new(RequiredCapabilities), []byte{3, 0, 1, 2, 0, 0})

	pubData, _ := pub.MarshalBinary()
	gi := &GroupInfo{Extensions: Extensions{{ExtensionType: ExtensionTypeApplicationID}, {ExtensionType: ExtensionTypeExternalPub, ExtensionData: pubData}}}
	if key, err := gi.ExternalPub(); err != nil || string(key) != "hpke" {
		t.Errorf("ExternalPub: %q, %v", key, err)
	}
	if e, ok := gi.Extensions.Find(ExtensionTypeApplicationID); !ok || e.ExtensionType != ExtensionTypeApplicationID {
		t.Errorf("Find: %v, %v", e, ok)
	}
	if _, ok := gi.Extensions.Find(ExtensionTypeRatchetTree); ok {
		t.Errorf("Find found an absent extension")
	}
	gi.Extensions[1].ExtensionData = append(pubData, 0)
	if _, err := gi.ExternalPub(); !errors.Is(err, ErrDecode) {
		t.Errorf("ExternalPub of a malformed extension: %v", err)
	}
	gi.Extensions = gi.Extensions[:1]
	var verr *ValidationError
	if _, err := gi.ExternalPub(); !errors.As(err, &verr) || verr.Section != "12.4.3.2" {
		t.Errorf("ExternalPub without the extension: %v", err)
	}
}

// TestWireWelcomeJoiners checks the routing helper.
func TestWireWelcomeJoiners(t *testing.T) {
	w := &Welcome{CipherSuite: 1, Secrets: []EncryptedGroupSecrets{{NewMember: KeyPackageRef("a")}, {NewMember: KeyPackageRef("b")}}}
	enc := mustMarshal(t, w)
	var got Welcome
	if err := wireRoundTrip(&got, enc); err != nil {
		t.Fatal(err)
	}
	if j := got.Joiners(); len(j) != 2 || string(j[0]) != "a" || string(j[1]) != "b" {
		t.Errorf("Joiners: %q", j)
	}
}
