package mls

import (
	"bytes"
	"errors"
	"fmt"
)

// This file is the joiner's side of a Welcome (§12.4.3.1) up to the point
// where the group's public state can be built: finding the secrets meant
// for one KeyPackage, decrypting them, running the key schedule from the
// joiner secret to the welcome secret (§8, with the PSKs of §8.4), opening
// the GroupInfo and checking its signature.

// ErrNoRatchetTree is returned by DecryptWelcome when the GroupInfo carries
// no ratchet_tree extension, so the signer's key is not at hand; fetch the
// tree (from the Delivery Service, say) and call DecryptWelcomeWithTree.
var ErrNoRatchetTree = errors.New("mls: the Welcome's GroupInfo has no ratchet_tree extension; get the tree from elsewhere and use DecryptWelcomeWithTree")

// DecryptWelcome opens a Welcome for the KeyPackage whose reference is
// kpRef, with initPriv the private key of that KeyPackage's init_key
// (§12.4.3.1). psks holds the pre-shared keys the Welcome may name: an
// external PSK under string(psk_id), a resumption PSK under
// ResumptionPSKKey(group_id, epoch). The GroupInfo signature is checked
// with the signer's leaf in the GroupInfo's ratchet_tree extension; without
// that extension DecryptWelcome returns ErrNoRatchetTree.
//
// It returns the decrypted GroupSecrets and the GroupInfo. The joiner must
// still check the tree against the GroupInfo (NewPublicGroupState does) and
// that the confirmation tag matches its key schedule.
func DecryptWelcome(w *Welcome, kpRef KeyPackageRef, initPriv []byte, psks map[string][]byte) (*GroupSecrets, *GroupInfo, error) {
	return DecryptWelcomeWithTree(w, kpRef, initPriv, psks, nil)
}

// DecryptWelcomeWithTree is DecryptWelcome for a joiner that got the
// ratchet tree apart from the Welcome: the GroupInfo signature is checked
// with the signer's leaf in tree. A nil tree means the GroupInfo's
// ratchet_tree extension, as in DecryptWelcome.
func DecryptWelcomeWithTree(w *Welcome, kpRef KeyPackageRef, initPriv []byte, psks map[string][]byte, tree *RatchetTree) (*GroupSecrets, *GroupInfo, error) {
	return decryptWelcome(w, kpRef, initPriv, psks, tree, nil)
}

// decryptWelcome is DecryptWelcomeWithTree with checkSecrets, if not nil,
// run on the GroupSecrets before their PSKs are looked up (reinit.go).
func decryptWelcome(w *Welcome, kpRef KeyPackageRef, initPriv []byte, psks map[string][]byte, tree *RatchetTree, checkSecrets func(*GroupSecrets) error) (*GroupSecrets, *GroupInfo, error) {
	gs, gi, err := openWelcomeChecked(w, kpRef, initPriv, psks, checkSecrets)
	if err != nil {
		return nil, nil, err
	}
	var signerKey []byte
	if tree != nil {
		leaf := tree.Leaf(gi.Signer)
		if leaf == nil {
			return nil, nil, invalidf("12.4.3.1", "GroupInfo signer %d is not a member of the ratchet tree", gi.Signer)
		}
		signerKey = leaf.SignatureKey
	} else {
		ext, ok := gi.Extensions.Find(ExtensionTypeRatchetTree)
		if !ok {
			return nil, nil, ErrNoRatchetTree
		}
		var rt RatchetTreeExtension
		if err := rt.UnmarshalBinary(ext.ExtensionData); err != nil {
			return nil, nil, fmt.Errorf("mls: ratchet_tree extension of the Welcome's GroupInfo: %w", err)
		}
		i := uint64(gi.Signer) * 2
		if i >= uint64(len(rt.Nodes)) || rt.Nodes[i] == nil || rt.Nodes[i].Leaf == nil {
			return nil, nil, invalidf("12.4.3.1", "GroupInfo signer %d is not a member of the ratchet tree", gi.Signer)
		}
		signerKey = rt.Nodes[i].Leaf.SignatureKey
	}
	if err := gi.VerifySignature(signerKey); err != nil {
		return nil, nil, &ValidationError{Rule: "GroupInfo signature does not verify with the signer's leaf", Section: "12.4.3.1", Err: err}
	}
	return gs, gi, nil
}

// ResumptionPSKKey is the key under which DecryptWelcome looks up the
// resumption_psk of epoch of group groupID in its psks map.
func ResumptionPSKKey(groupID []byte, epoch uint64) string {
	b := make([]byte, 0, len("resumption\x00")+len(groupID)+8)
	b = append(b, "resumption\x00"...)
	b = append(b, groupID...)
	for i := 7; i >= 0; i-- {
		b = append(b, byte(epoch>>(8*i)))
	}
	return string(b)
}

// pskLookupKey is the psks map key for id.
func pskLookupKey(id *PreSharedKeyID) string {
	if id.PSKType == PSKTypeResumption {
		return ResumptionPSKKey(id.PSKGroupID, id.PSKEpoch)
	}
	return string(id.PSKID)
}

// openWelcome decrypts the group secrets for kpRef and the GroupInfo, and
// checks everything but the GroupInfo signature.
func openWelcome(w *Welcome, kpRef KeyPackageRef, initPriv []byte, psks map[string][]byte) (*GroupSecrets, *GroupInfo, error) {
	return openWelcomeChecked(w, kpRef, initPriv, psks, nil)
}

// openWelcomeChecked is openWelcome with checkSecrets, if not nil, run on
// the decrypted GroupSecrets before anything else.
func openWelcomeChecked(w *Welcome, kpRef KeyPackageRef, initPriv []byte, psks map[string][]byte, checkSecrets func(*GroupSecrets) error) (*GroupSecrets, *GroupInfo, error) {
	cs := w.CipherSuite
	if err := cs.check(); err != nil {
		return nil, nil, err
	}
	var egs *EncryptedGroupSecrets
	for i := range w.Secrets {
		if bytes.Equal(w.Secrets[i].NewMember, kpRef) {
			egs = &w.Secrets[i]
			break
		}
	}
	if egs == nil {
		return nil, nil, invalid("12.4.3.1", "Welcome has no secrets for this KeyPackage")
	}
	pt, err := cs.DecryptWithLabel(initPriv, "Welcome", w.EncryptedGroupInfo,
		egs.EncryptedGroupSecrets.KEMOutput, egs.EncryptedGroupSecrets.Ciphertext)
	if err != nil {
		return nil, nil, &ValidationError{Rule: "cannot decrypt the Welcome's group secrets with the KeyPackage's init key", Section: "12.4.3.1", Err: err}
	}
	gs := new(GroupSecrets)
	if err := gs.UnmarshalBinary(pt); err != nil {
		return nil, nil, err
	}
	if len(gs.JoinerSecret) != cs.HashSize() {
		return nil, nil, invalidf("12.4.3.1", "joiner_secret has %d bytes; %s needs %d", len(gs.JoinerSecret), cs, cs.HashSize())
	}
	if gs.PathSecret != nil && len(gs.PathSecret) != cs.HashSize() {
		return nil, nil, invalidf("12.4.3.1", "path_secret has %d bytes; %s needs %d", len(gs.PathSecret), cs, cs.HashSize())
	}
	if checkSecrets != nil {
		if err := checkSecrets(gs); err != nil {
			return nil, nil, err
		}
	}

	// §12.4.3.1: every PSK must be available, and at most one resumption
	// PSK of usage reinit or branch may appear.
	special := 0
	list := make([]PSK, len(gs.PSKs))
	for i := range gs.PSKs {
		id := &gs.PSKs[i]
		if id.PSKType == PSKTypeResumption && (id.Usage == ResumptionPSKUsageReInit || id.Usage == ResumptionPSKUsageBranch) {
			special++
		}
		if len(id.PSKNonce) != cs.HashSize() {
			return nil, nil, invalidf("12.1.4", "psk_nonce of PSK %d has %d bytes; it must have Nh = %d", i, len(id.PSKNonce), cs.HashSize())
		}
		v, ok := psks[pskLookupKey(id)]
		if !ok {
			return nil, nil, invalidf("12.4.3.1", "Welcome names PSK %d (%s), which is not available", i, pskDescription(id))
		}
		list[i] = PSK{ID: *id, Secret: v}
	}
	if special > 1 {
		return nil, nil, invalid("12.4.3.1", "Welcome names more than one resumption PSK of usage reinit or branch")
	}
	pskSecret, err := PSKSecret(cs, list)
	if err != nil {
		return nil, nil, err
	}

	// §8: member_secret = Extract(joiner_secret, psk_secret),
	// welcome_secret = DeriveSecret(member_secret, "welcome"), and the
	// GroupInfo key and nonce are expanded from the welcome secret.
	ks, err := NewKeySchedule(cs, gs.JoinerSecret, pskSecret)
	if err != nil {
		return nil, nil, err
	}
	key, nonce, err := ks.WelcomeKey()
	if err != nil {
		return nil, nil, err
	}
	giData, err := cs.Open(key, nonce, nil, w.EncryptedGroupInfo)
	if err != nil {
		return nil, nil, &ValidationError{Rule: "cannot decrypt the Welcome's GroupInfo with the welcome key", Section: "12.4.3.1", Err: err}
	}
	gi := new(GroupInfo)
	if err := gi.UnmarshalBinary(giData); err != nil {
		return nil, nil, err
	}
	if gi.GroupContext.CipherSuite != cs {
		return nil, nil, invalidf("12.4.3.1", "GroupInfo cipher suite %d differs from the Welcome's %d", uint16(gi.GroupContext.CipherSuite), uint16(cs))
	}
	return gs, gi, nil
}

func pskDescription(id *PreSharedKeyID) string {
	if id.PSKType == PSKTypeResumption {
		return fmt.Sprintf("resumption PSK of epoch %d of group %x", id.PSKEpoch, id.PSKGroupID)
	}
	return fmt.Sprintf("external PSK %x", id.PSKID)
}
