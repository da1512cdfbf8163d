package mls

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
)

type protectVector struct {
	CipherSuite             CipherSuite `json:"cipher_suite"`
	GroupID                 hexBytes    `json:"group_id"`
	Epoch                   uint64      `json:"epoch"`
	TreeHash                hexBytes    `json:"tree_hash"`
	ConfirmedTranscriptHash hexBytes    `json:"confirmed_transcript_hash"`
	SignaturePriv           hexBytes    `json:"signature_priv"`
	SignaturePub            hexBytes    `json:"signature_pub"`
	EncryptionSecret        hexBytes    `json:"encryption_secret"`
	SenderDataSecret        hexBytes    `json:"sender_data_secret"`
	MembershipKey           hexBytes    `json:"membership_key"`
	Proposal                hexBytes    `json:"proposal"`
	ProposalPriv            hexBytes    `json:"proposal_priv"`
	ProposalPub             hexBytes    `json:"proposal_pub"`
	Commit                  hexBytes    `json:"commit"`
	CommitPriv              hexBytes    `json:"commit_priv"`
	CommitPub               hexBytes    `json:"commit_pub"`
	Application             hexBytes    `json:"application"`
	ApplicationPriv         hexBytes    `json:"application_priv"`
}

func (v *protectVector) context() *GroupContext {
	return &GroupContext{
		Version:                 ProtocolVersionMLS10,
		CipherSuite:             v.CipherSuite,
		GroupID:                 v.GroupID,
		Epoch:                   v.Epoch,
		TreeHash:                v.TreeHash,
		ConfirmedTranscriptHash: v.ConfirmedTranscriptHash,
	}
}

// protectSender is the sender of every message in message-protection.json.
var protectSender = Sender{SenderType: SenderTypeMember, LeafIndex: 1}

// contentBytes returns the encoding of the proposal, commit or application
// data that fc carries, to compare with the raw values of the vectors.
func contentBytes(fc *FramedContent) []byte {
	switch fc.ContentType {
	case ContentTypeProposal:
		return mustEncode(fc.Proposal)
	case ContentTypeCommit:
		return mustEncode(fc.Commit)
	}
	return fc.Application
}

// TestProtectVectors runs every entry of message-protection.json (§6): the
// given PublicMessages and PrivateMessages unprotect with the given
// secrets to the given proposal, commit and application data from leaf 1,
// with valid signatures; and the raw values, protected afresh as public
// and private messages, come back unchanged. An application message must
// not be protected as a PublicMessage.
func TestProtectVectors(t *testing.T) {
	var vs []protectVector
	loadVectors(t, "message-protection.json", &vs)
	count := newVectorCount("message-protection.json")
	defer count.report(t)
	for i, v := range vs {
		if !v.CipherSuite.Supported() {
			count.skip("cipher suite not supported")
			continue
		}
		if err := checkProtectVector(&v); err != nil {
			t.Errorf("entry %d (suite %d): %v", i, v.CipherSuite, err)
			continue
		}
		count.pass()
	}
}

func checkProtectVector(v *protectVector) error {
	cs := v.CipherSuite
	ctx := v.context()
	// The P-521 entry gives its 66-byte scalar with the leading zero octet
	// dropped; SignWithLabel accepts that form as it is.
	var commitTag []byte

	// The given PublicMessages.
	for _, c := range []struct {
		name     string
		msg, raw []byte
	}{{"proposal_pub", v.ProposalPub, v.Proposal}, {"commit_pub", v.CommitPub, v.Commit}} {
		m, err := ParseMLSMessage(c.msg)
		if err != nil {
			return fmt.Errorf("%s: %v", c.name, err)
		}
		if m.PublicMessage == nil {
			return fmt.Errorf("%s: wire format %d", c.name, m.WireFormat)
		}
		ac, err := UnprotectPublic(m.PublicMessage, v.MembershipKey, ctx)
		if err != nil {
			return fmt.Errorf("%s: %v", c.name, err)
		}
		if err := checkUnprotected(ac, v, c.raw, WireFormatPublicMessage); err != nil {
			return fmt.Errorf("%s: %v", c.name, err)
		}
		if ac.Content.ContentType == ContentTypeCommit {
			commitTag = ac.Auth.ConfirmationTag
		}
	}

	// The given PrivateMessages, each with the secret tree of the epoch.
	for _, c := range []struct {
		name     string
		msg, raw []byte
	}{{"proposal_priv", v.ProposalPriv, v.Proposal}, {"commit_priv", v.CommitPriv, v.Commit}, {"application_priv", v.ApplicationPriv, v.Application}} {
		m, err := ParseMLSMessage(c.msg)
		if err != nil {
			return fmt.Errorf("%s: %v", c.name, err)
		}
		if m.PrivateMessage == nil {
			return fmt.Errorf("%s: wire format %d", c.name, m.WireFormat)
		}
		tree, err := NewSecretTree(cs, v.EncryptionSecret, 2)
		if err != nil {
			return err
		}
		ac, err := UnprotectPrivate(m.PrivateMessage, v.SenderDataSecret, tree, func(l LeafIndex) bool { return l < 2 })
		if err != nil {
			return fmt.Errorf("%s: %v", c.name, err)
		}
		if err := checkUnprotected(ac, v, c.raw, WireFormatPrivateMessage); err != nil {
			return fmt.Errorf("%s: %v", c.name, err)
		}
		if ac.Content.ContentType == ContentTypeCommit && !bytes.Equal(ac.Auth.ConfirmationTag, commitTag) {
			return fmt.Errorf("%s: confirmation tag differs from commit_pub", c.name)
		}
	}

	// Protect the raw values afresh and unprotect them again.
	sendTree, err := NewSecretTree(cs, v.EncryptionSecret, 2)
	if err != nil {
		return err
	}
	recvTree, err := NewSecretTree(cs, v.EncryptionSecret, 2)
	if err != nil {
		return err
	}
	for _, c := range []struct {
		name string
		ct   ContentType
		raw  []byte
	}{{"proposal", ContentTypeProposal, v.Proposal}, {"commit", ContentTypeCommit, v.Commit}, {"application", ContentTypeApplication, v.Application}} {
		for _, wf := range []WireFormat{WireFormatPublicMessage, WireFormatPrivateMessage} {
			fc := FramedContent{GroupID: v.GroupID, Epoch: v.Epoch, Sender: protectSender, ContentType: c.ct}
			switch c.ct {
			case ContentTypeProposal:
				fc.Proposal = new(Proposal)
				if err := fc.Proposal.UnmarshalBinary(c.raw); err != nil {
					return fmt.Errorf("proposal: %v", err)
				}
			case ContentTypeCommit:
				fc.Commit = new(Commit)
				if err := fc.Commit.UnmarshalBinary(c.raw); err != nil {
					return fmt.Errorf("commit: %v", err)
				}
			default:
				fc.Application = c.raw
			}
			ac := &AuthenticatedContent{WireFormat: wf, Content: fc}
			if c.ct == ContentTypeCommit {
				ac.Auth.ConfirmationTag = commitTag
			}
			if err := ac.Sign(cs, v.SignaturePriv, ctx); err != nil {
				return err
			}
			var wire *MLSMessage
			if wf == WireFormatPublicMessage {
				pm, err := ProtectPublic(ac, v.MembershipKey, ctx)
				if c.ct == ContentTypeApplication {
					var ve *ValidationError
					if !errors.As(err, &ve) {
						return fmt.Errorf("application protected as PublicMessage (err %v)", err)
					}
					continue
				}
				if err != nil {
					return fmt.Errorf("protect %s as PublicMessage: %v", c.name, err)
				}
				wire = &MLSMessage{Version: ProtocolVersionMLS10, WireFormat: wf, PublicMessage: pm}
			} else {
				pm, err := ProtectPrivate(ac, v.SenderDataSecret, sendTree, 0)
				if err != nil {
					return fmt.Errorf("protect %s as PrivateMessage: %v", c.name, err)
				}
				wire = &MLSMessage{Version: ProtocolVersionMLS10, WireFormat: wf, PrivateMessage: pm}
			}
			data, err := wire.MarshalBinary()
			if err != nil {
				return fmt.Errorf("encode protected %s: %v", c.name, err)
			}
			m, err := ParseMLSMessage(data)
			if err != nil {
				return fmt.Errorf("decode protected %s: %v", c.name, err)
			}
			var got *AuthenticatedContent
			if wf == WireFormatPublicMessage {
				got, err = UnprotectPublic(m.PublicMessage, v.MembershipKey, ctx)
			} else {
				got, err = UnprotectPrivate(m.PrivateMessage, v.SenderDataSecret, recvTree, nil)
			}
			if err != nil {
				return fmt.Errorf("unprotect protected %s (wire format %d): %v", c.name, wf, err)
			}
			if err := checkUnprotected(got, v, c.raw, wf); err != nil {
				return fmt.Errorf("protected %s (wire format %d): %v", c.name, wf, err)
			}
		}
	}
	return nil
}

// checkUnprotected checks that ac came from leaf 1 of the vector's group
// and epoch in wire format wf, carries raw, and is validly signed.
func checkUnprotected(ac *AuthenticatedContent, v *protectVector, raw []byte, wf WireFormat) error {
	c := &ac.Content
	if ac.WireFormat != wf || !bytes.Equal(c.GroupID, v.GroupID) || c.Epoch != v.Epoch || c.Sender != protectSender {
		return fmt.Errorf("wire format %d group %x epoch %d sender %+v, want %d %x %d %+v",
			ac.WireFormat, c.GroupID, c.Epoch, c.Sender, wf, v.GroupID, v.Epoch, protectSender)
	}
	if got := contentBytes(c); !bytes.Equal(got, raw) {
		return fmt.Errorf("content %x, want %x", got, raw)
	}
	if err := ac.VerifySignature(v.CipherSuite, v.SignaturePub, v.context()); err != nil {
		return fmt.Errorf("signature: %v", err)
	}
	return nil
}

// protectGroup is a two-member group of one epoch for the tests below.
type protectGroup struct {
	cs               CipherSuite
	ctx              *GroupContext
	priv, pub        []byte
	senderDataSecret []byte
	membershipKey    []byte
	encryptionSecret []byte
}

func newProtectGroup(t *testing.T, cs CipherSuite) *protectGroup {
	t.Helper()
	ctx := &GroupContext{Version: ProtocolVersionMLS10, CipherSuite: cs, GroupID: []byte("protect test"), Epoch: 7,
		TreeHash: make([]byte, cs.HashSize()), ConfirmedTranscriptHash: make([]byte, cs.HashSize())}
	init := make([]byte, cs.HashSize())
	rand.Read(init)
	es, err := DeriveEpochSecrets(init, nil, nil, ctx)
	if err != nil {
		t.Fatal(err)
	}
	priv, pub, err := cs.GenerateSignatureKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	return &protectGroup{cs: cs, ctx: ctx, priv: priv, pub: pub,
		senderDataSecret: es.SenderDataSecret, membershipKey: es.MembershipKey, encryptionSecret: es.EncryptionSecret}
}

func (g *protectGroup) tree(t *testing.T) *SecretTree {
	t.Helper()
	tree, err := NewSecretTree(g.cs, g.encryptionSecret, 2)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// content returns a signed AuthenticatedContent from leaf 1.
func (g *protectGroup) content(t *testing.T, wf WireFormat, ct ContentType, data string) *AuthenticatedContent {
	t.Helper()
	ac := &AuthenticatedContent{WireFormat: wf, Content: FramedContent{
		GroupID: g.ctx.GroupID, Epoch: g.ctx.Epoch, Sender: protectSender,
		AuthenticatedData: []byte("aad"), ContentType: ct,
	}}
	switch ct {
	case ContentTypeApplication:
		ac.Content.Application = []byte(data)
	case ContentTypeProposal:
		ac.Content.Proposal = &Proposal{ProposalType: ProposalTypeRemove, Remove: &Remove{Removed: 0}}
	case ContentTypeCommit:
		ac.Content.Commit = &Commit{}
	}
	if err := ac.Sign(g.cs, g.priv, g.ctx); err != nil {
		t.Fatal(err)
	}
	return ac
}

func (g *protectGroup) protect(t *testing.T, tree *SecretTree, data string, padding int) *PrivateMessage {
	t.Helper()
	m, err := ProtectPrivate(g.content(t, WireFormatPrivateMessage, ContentTypeApplication, data), g.senderDataSecret, tree, padding)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func wantProtectError(t *testing.T, what string, err, target error, section string) {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Section != section || (target != nil && !errors.Is(err, target)) {
		t.Errorf("%s: got %v, want a §%s ValidationError wrapping %v", what, err, section, target)
	}
}

// TestProtectPrivateRoundTrip protects and unprotects application and
// proposal messages in every suite, out of order and with padding.
func TestProtectPrivateRoundTrip(t *testing.T) {
	for cs := CipherSuite(1); cs <= 7; cs++ {
		g := newProtectGroup(t, cs)
		send, recv := g.tree(t), g.tree(t)
		msgs := make([]*PrivateMessage, 3)
		for i := range msgs {
			msgs[i] = g.protect(t, send, fmt.Sprintf("message %d", i), 10*i)
		}
		for _, i := range []int{2, 0, 1} {
			ac, err := UnprotectPrivate(msgs[i], g.senderDataSecret, recv, nil)
			if err != nil {
				t.Fatalf("%v message %d: %v", cs, i, err)
			}
			if got, want := string(ac.Content.Application), fmt.Sprintf("message %d", i); got != want {
				t.Errorf("%v: got %q, want %q", cs, got, want)
			}
			if !bytes.Equal(ac.Content.AuthenticatedData, []byte("aad")) {
				t.Errorf("%v: authenticated_data lost", cs)
			}
			if err := ac.VerifySignature(cs, g.pub, g.ctx); err != nil {
				t.Errorf("%v: %v", cs, err)
			}
		}
		p, err := ProtectPrivate(g.content(t, WireFormatPrivateMessage, ContentTypeProposal, ""), g.senderDataSecret, send, 0)
		if err != nil {
			t.Fatal(err)
		}
		ac, err := UnprotectPrivate(p, g.senderDataSecret, recv, nil)
		if err != nil || ac.Content.Proposal == nil || ac.Content.Proposal.ProposalType != ProposalTypeRemove {
			t.Errorf("%v: proposal round trip: %+v, %v", cs, ac, err)
		}
	}
}

// TestProtectPrivatePadding checks that zero padding is accepted and
// stripped and that non-zero padding is rejected as malformed (§6.3.1).
func TestProtectPrivatePadding(t *testing.T) {
	g := newProtectGroup(t, MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519)
	send, recv := g.tree(t), g.tree(t)
	plain := g.protect(t, send, "hi", 0)
	padded := g.protect(t, send, "hi", 100)
	if len(padded.Ciphertext) != len(plain.Ciphertext)+100 {
		t.Errorf("100 bytes of padding grew the ciphertext from %d to %d bytes", len(plain.Ciphertext), len(padded.Ciphertext))
	}
	if ac, err := UnprotectPrivate(padded, g.senderDataSecret, recv, nil); err != nil || string(ac.Content.Application) != "hi" {
		t.Errorf("zero padding: %v", err)
	}

	for _, pad := range [][]byte{{1}, {0, 0, 0, 0x80}} {
		ac := g.content(t, WireFormatPrivateMessage, ContentTypeApplication, "hi")
		m := sealWithPlaintext(t, g, send, ac, append(mustEncode(&privateMessageContent{content: &ac.Content, auth: &ac.Auth}), pad...))
		_, err := UnprotectPrivate(m, g.senderDataSecret, recv, nil)
		wantProtectError(t, fmt.Sprintf("padding %x", pad), err, ErrDecode, "6.3.1")
	}
}

// sealWithPlaintext encrypts plaintext as the PrivateMessageContent of ac
// with the next key of the sender, as ProtectPrivate does, so that tests
// can send contents ProtectPrivate would never produce.
func sealWithPlaintext(t *testing.T, g *protectGroup, tree *SecretTree, ac *AuthenticatedContent, plaintext []byte) *PrivateMessage {
	t.Helper()
	c := &ac.Content
	m := &PrivateMessage{GroupID: c.GroupID, Epoch: c.Epoch, ContentType: c.ContentType, AuthenticatedData: c.AuthenticatedData}
	gen, key, nonce, err := tree.NextKey(c.Sender.LeafIndex, RatchetFor(c.ContentType))
	if err != nil {
		t.Fatal(err)
	}
	sd := senderData{leafIndex: c.Sender.LeafIndex, generation: gen, reuseGuard: [4]byte{1, 2, 3, 4}}
	applyReuseGuard(nonce, sd.reuseGuard)
	if m.Ciphertext, err = g.cs.Seal(key, nonce, mustEncode(privateContentAAD{m}), plaintext); err != nil {
		t.Fatal(err)
	}
	sdKey, sdNonce, err := senderDataKey(g.cs, g.senderDataSecret, m.Ciphertext)
	if err != nil {
		t.Fatal(err)
	}
	if m.EncryptedSenderData, err = g.cs.Seal(sdKey, sdNonce, mustEncode(senderDataAAD{m}), mustEncode(&sd)); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestProtectPrivateReuseGuard checks that the reuse guard is fresh per
// message and enters the content nonce: the same content sent twice from
// the same generation (as after a lost state) gives different ciphertexts.
func TestProtectPrivateReuseGuard(t *testing.T) {
	g := newProtectGroup(t, MLS_128_DHKEMP256_AES128GCM_SHA256_P256)
	a := g.protect(t, g.tree(t), "same", 0)
	b := g.protect(t, g.tree(t), "same", 0) // a second tree: generation 0 again
	if bytes.Equal(a.Ciphertext, b.Ciphertext) {
		t.Error("two messages from the same key and nonce have the same ciphertext: the reuse guard is not applied")
	}
	for _, m := range []*PrivateMessage{a, b} {
		if _, err := UnprotectPrivate(m, g.senderDataSecret, g.tree(t), nil); err != nil {
			t.Error(err)
		}
	}
}

// TestProtectPrivateRejects checks the typed errors of UnprotectPrivate
// and ProtectPrivate.
func TestProtectPrivateRejects(t *testing.T) {
	g := newProtectGroup(t, MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519)
	send, recv := g.tree(t), g.tree(t)
	m := g.protect(t, send, "a message long enough to tamper with beyond the sample", 0)

	// Tampering: each field that is authenticated.
	tampered := func(f func(m *PrivateMessage)) *PrivateMessage {
		c := *m
		c.Ciphertext = bytes.Clone(m.Ciphertext)
		c.EncryptedSenderData = bytes.Clone(m.EncryptedSenderData)
		f(&c)
		return &c
	}
	for _, c := range []struct {
		name    string
		m       *PrivateMessage
		section string
	}{
		{"ciphertext after the sample", tampered(func(m *PrivateMessage) { m.Ciphertext[len(m.Ciphertext)-1] ^= 1 }), "6.3.1"},
		{"ciphertext sample", tampered(func(m *PrivateMessage) { m.Ciphertext[0] ^= 1 }), "6.3.2"},
		{"encrypted sender data", tampered(func(m *PrivateMessage) { m.EncryptedSenderData[3] ^= 1 }), "6.3.2"},
		{"authenticated_data", tampered(func(m *PrivateMessage) { m.AuthenticatedData = []byte("other") }), "6.3.1"},
		{"epoch", tampered(func(m *PrivateMessage) { m.Epoch++ }), "6.3.2"},
		{"content_type", tampered(func(m *PrivateMessage) { m.ContentType = ContentTypeProposal }), "6.3.2"},
	} {
		_, err := UnprotectPrivate(c.m, g.senderDataSecret, recv, nil)
		wantProtectError(t, "tampered "+c.name, err, ErrDecryptionFailed, c.section)
	}
	// A forgery must not cost the receiver the key of the genuine message.
	if _, err := UnprotectPrivate(m, g.senderDataSecret, recv, nil); err != nil {
		t.Fatalf("genuine message after tampered copies: %v", err)
	}
	// Replay.
	_, err := UnprotectPrivate(m, g.senderDataSecret, recv, nil)
	wantProtectError(t, "replayed message", err, ErrGenerationUsed, "9.2")

	// Secrets of another epoch.
	other := newProtectGroup(t, g.cs)
	m2 := g.protect(t, send, "second", 0)
	_, err = UnprotectPrivate(m2, other.senderDataSecret, recv, nil)
	wantProtectError(t, "wrong sender_data_secret", err, ErrDecryptionFailed, "6.3.2")
	_, err = UnprotectPrivate(m2, g.senderDataSecret, other.tree(t), nil)
	wantProtectError(t, "wrong encryption_secret", err, ErrDecryptionFailed, "6.3.1")

	// A sender far ahead of the receiver.
	far := g.tree(t)
	for range DefaultMaxForward + 1 {
		if _, _, _, err := far.NextKey(1, ApplicationRatchet); err != nil {
			t.Fatal(err)
		}
	}
	_, err = UnprotectPrivate(g.protect(t, far, "far", 0), g.senderDataSecret, g.tree(t), nil)
	wantProtectError(t, "generation too far ahead", err, ErrGenerationTooFarAhead, "15.3")

	// A blank sender leaf.
	_, err = UnprotectPrivate(g.protect(t, g.tree(t), "x", 0), g.senderDataSecret, g.tree(t), func(LeafIndex) bool { return false })
	wantProtectError(t, "blank sender leaf", err, nil, "6.3.2")

	// Only members send PrivateMessages, with the matching wire format.
	ac := g.content(t, WireFormatPrivateMessage, ContentTypeApplication, "x")
	ac.Content.Sender = Sender{SenderType: SenderTypeExternal}
	_, err = ProtectPrivate(ac, g.senderDataSecret, send, 0)
	wantProtectError(t, "external sender", err, nil, "6.3.2")
	if _, err := ProtectPrivate(g.content(t, WireFormatPublicMessage, ContentTypeApplication, "x"), g.senderDataSecret, send, 0); err == nil {
		t.Error("content signed for public_message was encrypted")
	}
	unsigned := g.content(t, WireFormatPrivateMessage, ContentTypeApplication, "x")
	unsigned.Auth.Signature = nil
	if _, err := ProtectPrivate(unsigned, g.senderDataSecret, send, 0); err == nil {
		t.Error("unsigned content was encrypted")
	}
	if _, err := ProtectPrivate(g.content(t, WireFormatPrivateMessage, ContentTypeCommit, ""), g.senderDataSecret, send, 0); err == nil {
		t.Error("a commit without confirmation tag was encrypted")
	}
}

// TestProtectPublic checks the membership tag of §6.2.
func TestProtectPublic(t *testing.T) {
	g := newProtectGroup(t, MLS_256_DHKEMP384_AES256GCM_SHA384_P384)
	ac := g.content(t, WireFormatPublicMessage, ContentTypeProposal, "")
	pm, err := ProtectPublic(ac, g.membershipKey, g.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := UnprotectPublic(pm, g.membershipKey, g.ctx); err != nil {
		t.Fatal(err)
	}

	bad := *pm
	bad.MembershipTag = bytes.Clone(pm.MembershipTag)
	bad.MembershipTag[0] ^= 1
	_, err = UnprotectPublic(&bad, g.membershipKey, g.ctx)
	wantProtectError(t, "altered membership tag", err, ErrBadMembershipTag, "6.2")

	bad = *pm
	bad.MembershipTag = nil
	_, err = UnprotectPublic(&bad, g.membershipKey, g.ctx)
	wantProtectError(t, "missing membership tag", err, ErrBadMembershipTag, "6.2")

	other := newProtectGroup(t, g.cs)
	_, err = UnprotectPublic(pm, other.membershipKey, g.ctx)
	wantProtectError(t, "membership key of another epoch", err, ErrBadMembershipTag, "6.2")

	ctx := *g.ctx
	ctx.Epoch++
	_, err = UnprotectPublic(pm, g.membershipKey, &ctx)
	wantProtectError(t, "another GroupContext", err, ErrBadMembershipTag, "6.2")

	bad = *pm
	bad.Content.AuthenticatedData = []byte("changed")
	_, err = UnprotectPublic(&bad, g.membershipKey, g.ctx)
	wantProtectError(t, "altered content", err, ErrBadMembershipTag, "6.2")

	// Non-members carry no tag.
	ext := g.content(t, WireFormatPublicMessage, ContentTypeProposal, "")
	ext.Content.Sender = Sender{SenderType: SenderTypeExternal, SenderIndex: 0}
	epm, err := ProtectPublic(ext, nil, nil)
	if err != nil || epm.MembershipTag != nil {
		t.Errorf("external sender: tag %x, %v", epm.MembershipTag, err)
	}

	// Application data is never sent in the clear (§6).
	_, err = ProtectPublic(g.content(t, WireFormatPublicMessage, ContentTypeApplication, "x"), g.membershipKey, g.ctx)
	wantProtectError(t, "application as PublicMessage", err, nil, "6")
	app := &PublicMessage{Content: FramedContent{GroupID: g.ctx.GroupID, Sender: protectSender, ContentType: ContentTypeApplication}}
	_, err = UnprotectPublic(app, g.membershipKey, g.ctx)
	wantProtectError(t, "received application PublicMessage", err, nil, "6")
	if _, err := ProtectPublic(g.content(t, WireFormatPublicMessage, ContentTypeCommit, ""), g.membershipKey, g.ctx); err == nil {
		t.Error("a commit without confirmation tag was sent as PublicMessage")
	}
	if _, err := ProtectPublic(g.content(t, WireFormatPrivateMessage, ContentTypeProposal, ""), g.membershipKey, g.ctx); err == nil {
		t.Error("content signed for private_message was sent as PublicMessage")
	}
}
