package client

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"

	"github.com/mlsds/mlsds/mls"
)

// Remote trees: in an opaque group the Delivery Service cannot read the
// group, so members keep an encrypted copy of each epoch's GroupInfo and
// ratchet tree there, for the members that join by Welcome without the
// ratchet_tree extension, or that lost their state. Only members of the
// epoch can derive the key:
//
//	key     = MLS-Exporter("mlsds remote tree", context, Nk)       (RFC 9420 §8.5)
//	context = uint32 len(group_id) || group_id || uint64 epoch
//	blob    = version (1 byte, 1) || nonce (Nn bytes, random) || ciphertext
//	ciphertext = AEAD.Seal(key, nonce, aad, plaintext)  with the group's AEAD
//	aad     = version || uint32 len(group_id) || group_id || uint64 epoch
//	plaintext = uint32 len || GroupInfo || uint32 len || ratchet tree
//
// Integers are big-endian. The GroupInfo and the tree are in their TLS
// encodings (§12.4.3, §12.4.3.3); the GroupInfo carries no ratchet_tree
// extension. A blob opens only with the key of its own group and epoch.
// Anyone holding the key (any member of the epoch) can make a blob, so
// OpenRemoteTree checks what it opens: the tree's hash must be the
// GroupInfo's tree_hash and the GroupInfo must be signed by the tree's
// leaf it names. Joining then checks the rest (mls.JoinGroup).

// RemoteTreeLabel is the MLS-Exporter label of remote-tree keys.
const RemoteTreeLabel = "mlsds remote tree"

// remoteTreeVersion is the first byte of a blob.
const remoteTreeVersion = 1

// ErrRemoteTree is wrapped by the errors of OpenRemoteTree about a blob
// that does not open or whose content is not what it should be.
var ErrRemoteTree = errors.New("client: bad remote tree")

func remoteTreeErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRemoteTree, fmt.Sprintf(format, args...))
}

// addGroupEpoch writes uint32 len(group_id) || group_id || uint64 epoch.
func addGroupEpoch(b *cryptobyte.Builder, groupID []byte, epoch uint64) {
	b.AddUint32LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(groupID) })
	b.AddUint64(epoch)
}

// remoteTreeContext is the exporter context of the key of groupID's epoch.
func remoteTreeContext(groupID []byte, epoch uint64) []byte {
	b := cryptobyte.NewBuilder(nil)
	addGroupEpoch(b, groupID, epoch)
	return b.BytesOrPanic()
}

// readUint32Prefixed reads a value written with AddUint32LengthPrefixed.
func readUint32Prefixed(s *cryptobyte.String, out *[]byte) bool {
	var n uint32
	return s.ReadUint32(&n) && s.ReadBytes(out, int(n))
}

func remoteTreeAAD(groupID []byte, epoch uint64) []byte {
	b := cryptobyte.NewBuilder(nil)
	b.AddUint8(remoteTreeVersion)
	addGroupEpoch(b, groupID, epoch)
	return b.BytesOrPanic()
}

// RemoteTreeKey returns the remote-tree key of g's current epoch.
func RemoteTreeKey(g *mls.Group) ([]byte, error) {
	cs := g.GroupContext().CipherSuite
	return g.Export(RemoteTreeLabel, remoteTreeContext(g.GroupID(), g.Epoch()), cs.AEADKeySize())
}

// WelcomeRemoteTreeKey opens the Welcome w for the KeyPackage kp (priv
// holds its private keys; psks the PSKs the Welcome may name, as in
// mls.JoinGroup) and returns the remote-tree key of the epoch the Welcome
// starts, with what the Welcome tells of that epoch (its group id, epoch
// and cipher suite are those to give OpenRemoteTree). This is for a Welcome
// without the ratchet_tree extension: fetch the blob of that epoch
// (GetRemoteTree), open it, and join with mls.JoinGroup and the tree.
func WelcomeRemoteTreeKey(w *mls.Welcome, kp *mls.KeyPackage, priv *mls.KeyPackagePrivate, psks map[string][]byte) ([]byte, *mls.WelcomeEpoch, error) {
	ref, err := kp.Ref()
	if err != nil {
		return nil, nil, err
	}
	e, err := mls.OpenWelcomeEpoch(w, ref, priv.InitPriv, psks)
	if err != nil {
		return nil, nil, err
	}
	key, err := e.Export(RemoteTreeLabel, remoteTreeContext(e.GroupID(), e.Epoch()), e.CipherSuite().AEADKeySize())
	if err != nil {
		return nil, nil, err
	}
	return key, e, nil
}

// SealRemoteTree encrypts gi and tree for g's current epoch. gi must be a
// GroupInfo of that epoch and tree its ratchet tree (typically
// g.GroupInfo(false) and g.Tree()).
func SealRemoteTree(g *mls.Group, gi *mls.GroupInfo, tree *mls.RatchetTree) (blob []byte, err error) {
	key, err := RemoteTreeKey(g)
	if err != nil {
		return nil, err
	}
	return sealRemoteTree(g.GroupContext().CipherSuite, key, g.GroupID(), g.Epoch(), gi, tree)
}

// SealPendingRemoteTree encrypts the GroupInfo and ratchet tree of the
// epoch that g's pending Commit starts, under that epoch's key: the blob
// to send with the Commit (SendCommitBundleRequest.remote_tree), so that
// the joiners of its Welcome find the tree as soon as the Commit is
// accepted. It returns that epoch and the blob.
func SealPendingRemoteTree(g *mls.Group) (epoch uint64, blob []byte, err error) {
	gi, tree, err := g.PendingGroupInfo(false)
	if err != nil {
		return 0, nil, err
	}
	gc := &gi.GroupContext
	key, err := g.PendingExport(RemoteTreeLabel, remoteTreeContext(gc.GroupID, gc.Epoch), gc.CipherSuite.AEADKeySize())
	if err != nil {
		return 0, nil, err
	}
	blob, err = sealRemoteTree(gc.CipherSuite, key, gc.GroupID, gc.Epoch, gi, tree)
	return gc.Epoch, blob, err
}

func sealRemoteTree(cs mls.CipherSuite, key, groupID []byte, epoch uint64, gi *mls.GroupInfo, tree *mls.RatchetTree) ([]byte, error) {
	gc := &gi.GroupContext
	if !bytes.Equal(gc.GroupID, groupID) || gc.Epoch != epoch || gc.CipherSuite != cs {
		return nil, fmt.Errorf("client: the GroupInfo is for group %x epoch %d (%v), not group %x epoch %d (%v)",
			gc.GroupID, gc.Epoch, gc.CipherSuite, groupID, epoch, cs)
	}
	if !bytes.Equal(tree.TreeHash(), gc.TreeHash) {
		return nil, errors.New("client: the ratchet tree is not the GroupInfo's (its hash differs from tree_hash)")
	}
	giData, err := gi.MarshalBinary()
	if err != nil {
		return nil, err
	}
	treeData, err := tree.MarshalBinary()
	if err != nil {
		return nil, err
	}
	pt := cryptobyte.NewBuilder(nil)
	pt.AddUint32LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(giData) })
	pt.AddUint32LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(treeData) })
	plaintext, err := pt.Bytes()
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, cs.AEADNonceSize())
	rand.Read(nonce)
	ct, err := cs.Seal(key, nonce, remoteTreeAAD(groupID, epoch), plaintext)
	if err != nil {
		return nil, err
	}
	blob := make([]byte, 0, 1+len(nonce)+len(ct))
	blob = append(blob, remoteTreeVersion)
	blob = append(blob, nonce...)
	return append(blob, ct...), nil
}

// OpenRemoteTree decrypts a blob of g's current epoch (or one whose
// exporter secret the caller holds) and checks that the tree's hash equals
// the GroupInfo's tree_hash and the GroupInfo is for the group and epoch.
// exporterKey is the remote-tree key of that group and epoch
// (RemoteTreeKey, WelcomeRemoteTreeKey). The GroupInfo must also be signed
// by the tree's leaf that it names as signer. The tree's other invariants
// (parent hashes, leaf validity) are checked when it is used, by
// mls.JoinGroup or mls.NewPublicGroupState. Errors about the blob wrap
// ErrRemoteTree.
func OpenRemoteTree(cs mls.CipherSuite, exporterKey []byte, groupID []byte, epoch uint64, blob []byte) (*mls.GroupInfo, *mls.RatchetTree, error) {
	if !cs.Supported() {
		return nil, nil, fmt.Errorf("client: unsupported cipher suite %v", cs)
	}
	if len(blob) == 0 || blob[0] != remoteTreeVersion {
		return nil, nil, remoteTreeErrorf("unknown format version (want %d); a newer client may have written it", remoteTreeVersion)
	}
	nn := cs.AEADNonceSize()
	if len(blob) < 1+nn {
		return nil, nil, remoteTreeErrorf("%d bytes are too short for a blob", len(blob))
	}
	nonce, ct := blob[1:1+nn], blob[1+nn:]
	pt, err := cs.Open(exporterKey, nonce, remoteTreeAAD(groupID, epoch), ct)
	if err != nil {
		return nil, nil, remoteTreeErrorf("does not decrypt with the key of group %x epoch %d (a blob of another group or epoch, or altered)", groupID, epoch)
	}
	s := cryptobyte.String(pt)
	var giData, treeData []byte
	if !readUint32Prefixed(&s, &giData) || !readUint32Prefixed(&s, &treeData) || !s.Empty() {
		return nil, nil, remoteTreeErrorf("the decrypted content is malformed")
	}
	gi := new(mls.GroupInfo)
	if err := gi.UnmarshalBinary(giData); err != nil {
		return nil, nil, fmt.Errorf("%w: GroupInfo: %w", ErrRemoteTree, err)
	}
	gc := &gi.GroupContext
	if !bytes.Equal(gc.GroupID, groupID) || gc.Epoch != epoch || gc.CipherSuite != cs {
		return nil, nil, remoteTreeErrorf("the GroupInfo is for group %x epoch %d (%v), not group %x epoch %d (%v)",
			gc.GroupID, gc.Epoch, gc.CipherSuite, groupID, epoch, cs)
	}
	tree, err := mls.UnmarshalRatchetTree(cs, treeData)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: ratchet tree: %w", ErrRemoteTree, err)
	}
	if !bytes.Equal(tree.TreeHash(), gc.TreeHash) {
		return nil, nil, remoteTreeErrorf("the ratchet tree's hash is not the GroupInfo's tree_hash")
	}
	signer := tree.Leaf(gi.Signer)
	if signer == nil {
		return nil, nil, remoteTreeErrorf("the GroupInfo's signer %d holds no leaf of the tree", gi.Signer)
	}
	if err := gi.VerifySignature(signer.SignatureKey); err != nil {
		return nil, nil, fmt.Errorf("%w: GroupInfo signature: %w", ErrRemoteTree, err)
	}
	return gi, tree, nil
}
