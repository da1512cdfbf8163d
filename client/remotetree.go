package client

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/crypto/cryptobyte"

	"github.com/mlsds/mlsds/mls"
)

// Remote trees: in an opaque group the Delivery Service cannot read the
// group, so members keep an encrypted copy of each epoch's GroupInfo and
// ratchet tree there, for the members that join by Welcome without the
// ratchet_tree extension, that lost their state, or that could not
// process a Commit. Only members of an epoch can derive its key:
//
//	key(e)  = MLS-Exporter("mlsds remote tree", context(e), Nk)    (RFC 9420 §8.5)
//	context(e) = uint32 len(group_id) || group_id || uint64 e
//
// A blob (version 2) holds the same plaintext sealed under the keys of
// several epochs, so that members who are not (yet) in the blob's epoch
// can open it too:
//
//	blob    = 2 (1 byte) || uint8 n || n * sealing
//	sealing = uint64 sealed_under || nonce (Nn bytes, random) || uint32 len || ciphertext
//	ciphertext = AEAD.Seal(key(sealed_under), nonce, aad, plaintext)  with the group's AEAD
//	aad     = 2 || uint32 len(group_id) || group_id || uint64 epoch || uint64 sealed_under
//	plaintext = uint32 len || GroupInfo || uint32 len || ratchet tree
//
// where epoch is the epoch of the GroupInfo. Who seals under what:
//
//   - every blob under its own epoch's key, for the joiners of a Welcome
//     (WelcomeRemoteTreeKey) and for members that lost their state;
//   - the blob of a Commit (SendCommitBundleRequest.remote_tree, which the
//     SDK sends with every opaque Commit) also under the key of the epoch
//     the Commit was made in: a member that cannot process the Commit (a
//     bad confirmation tag, a garbage path, a roster that lies, ...) opens
//     it with the key it holds and rejoins from it by a resync external
//     Commit (opaque_recovery.go);
//   - the blob of such a resync also under the key of the last epoch the
//     resyncing member held before it fell behind, so that the other
//     members stuck there follow it in turn.
//
// Integers are big-endian. The GroupInfo and the tree are in their TLS
// encodings (§12.4.3, §12.4.3.3); the GroupInfo carries no ratchet_tree
// extension. A sealing opens only with the key of its own group and
// sealed_under epoch, and only as a blob of its own epoch. Anyone holding
// a key (any member of that epoch) can make a blob, so OpenRemoteTree
// checks what it opens: the tree's hash must be the GroupInfo's tree_hash
// and the GroupInfo must be signed by the tree's leaf it names. Joining
// then checks the rest (mls.JoinGroup, mls.JoinExternalWith).
//
// Version 1 blobs (1 || nonce || ciphertext, sealed under the blob's own
// epoch, aad = 1 || uint32 len(group_id) || group_id || uint64 epoch), as
// written by earlier clients, still open.

// RemoteTreeLabel is the MLS-Exporter label of remote-tree keys.
const RemoteTreeLabel = "mlsds remote tree"

// remoteTreeVersion is the first byte of the blobs written now;
// remoteTreeVersion1 that of the blobs of earlier clients, still opened.
const (
	remoteTreeVersion  = 2
	remoteTreeVersion1 = 1
)

// maxRemoteTreeSealings bounds the sealings of one blob.
const maxRemoteTreeSealings = 8

// ErrRemoteTree is wrapped by the errors of OpenRemoteTree about a blob
// that does not open or whose content is not what it should be.
var ErrRemoteTree = errors.New("client: bad remote tree")

func remoteTreeErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRemoteTree, fmt.Sprintf(format, args...))
}

// EpochKey is the remote-tree key of one epoch of a group (see
// RemoteTreeKey).
type EpochKey struct {
	Epoch uint64
	Key   []byte
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

// remoteTreeAAD is the aad of a version 1 blob.
func remoteTreeAAD(groupID []byte, epoch uint64) []byte {
	b := cryptobyte.NewBuilder(nil)
	b.AddUint8(remoteTreeVersion1)
	addGroupEpoch(b, groupID, epoch)
	return b.BytesOrPanic()
}

// remoteTreeAAD2 is the aad of a version 2 sealing under the key of epoch
// sealedUnder of a blob of epoch.
func remoteTreeAAD2(groupID []byte, epoch, sealedUnder uint64) []byte {
	b := cryptobyte.NewBuilder(nil)
	b.AddUint8(remoteTreeVersion)
	addGroupEpoch(b, groupID, epoch)
	b.AddUint64(sealedUnder)
	return b.BytesOrPanic()
}

// RemoteTreeKey returns the remote-tree key of g's current epoch.
func RemoteTreeKey(g *mls.Group) ([]byte, error) {
	cs := g.GroupContext().CipherSuite
	return g.Export(RemoteTreeLabel, remoteTreeContext(g.GroupID(), g.Epoch()), cs.AEADKeySize())
}

// epochKey returns the remote-tree key of g's current epoch with the epoch.
func epochKey(g *mls.Group) (EpochKey, error) {
	k, err := RemoteTreeKey(g)
	return EpochKey{Epoch: g.Epoch(), Key: k}, err
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

// SealRemoteTree encrypts gi and tree for g's current epoch, under that
// epoch's key and the keys also (other epochs' keys the caller holds, see
// the top of this file). gi must be a GroupInfo of that epoch and tree its
// ratchet tree (typically g.GroupInfo(false) and g.Tree()).
func SealRemoteTree(g *mls.Group, gi *mls.GroupInfo, tree *mls.RatchetTree, also ...EpochKey) (blob []byte, err error) {
	own, err := epochKey(g)
	if err != nil {
		return nil, err
	}
	return sealRemoteTree(g.GroupContext().CipherSuite, g.GroupID(), g.Epoch(), gi, tree, append([]EpochKey{own}, also...))
}

// SealPendingRemoteTree encrypts the GroupInfo and ratchet tree of the
// epoch that g's pending Commit starts, under that epoch's key and under
// the key of g's current epoch (the one the Commit is made in): the blob
// to send with the Commit (SendCommitBundleRequest.remote_tree), so that
// the joiners of its Welcome find the tree as soon as the Commit is
// accepted, and the members who cannot process the Commit can rejoin. It
// returns that epoch and the blob.
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
	current, err := epochKey(g)
	if err != nil {
		return 0, nil, err
	}
	blob, err = sealRemoteTree(gc.CipherSuite, gc.GroupID, gc.Epoch, gi, tree, []EpochKey{{Epoch: gc.Epoch, Key: key}, current})
	return gc.Epoch, blob, err
}

func sealRemoteTree(cs mls.CipherSuite, groupID []byte, epoch uint64, gi *mls.GroupInfo, tree *mls.RatchetTree, keys []EpochKey) ([]byte, error) {
	gc := &gi.GroupContext
	if !bytes.Equal(gc.GroupID, groupID) || gc.Epoch != epoch || gc.CipherSuite != cs {
		return nil, fmt.Errorf("client: the GroupInfo is for group %x epoch %d (%v), not group %x epoch %d (%v)",
			gc.GroupID, gc.Epoch, gc.CipherSuite, groupID, epoch, cs)
	}
	if !bytes.Equal(tree.TreeHash(), gc.TreeHash) {
		return nil, errors.New("client: the ratchet tree is not the GroupInfo's (its hash differs from tree_hash)")
	}
	// One sealing per epoch, in the order given.
	var uniq []EpochKey
	for _, k := range keys {
		if !slices.ContainsFunc(uniq, func(u EpochKey) bool { return u.Epoch == k.Epoch }) {
			uniq = append(uniq, k)
		}
	}
	if len(uniq) == 0 || len(uniq) > maxRemoteTreeSealings {
		return nil, fmt.Errorf("client: a remote tree is sealed under 1 to %d keys, not %d", maxRemoteTreeSealings, len(uniq))
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
	b := cryptobyte.NewBuilder(nil)
	b.AddUint8(remoteTreeVersion)
	b.AddUint8(uint8(len(uniq)))
	for _, k := range uniq {
		nonce := make([]byte, cs.AEADNonceSize())
		rand.Read(nonce)
		ct, err := cs.Seal(k.Key, nonce, remoteTreeAAD2(groupID, epoch, k.Epoch), plaintext)
		if err != nil {
			return nil, err
		}
		b.AddUint64(k.Epoch)
		b.AddBytes(nonce)
		b.AddUint32LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(ct) })
	}
	return b.Bytes()
}

// OpenRemoteTree decrypts a blob of group groupID's epoch with that
// epoch's key (exporterKey: RemoteTreeKey, WelcomeRemoteTreeKey) and checks
// it (see OpenRemoteTreeWith).
func OpenRemoteTree(cs mls.CipherSuite, exporterKey []byte, groupID []byte, epoch uint64, blob []byte) (*mls.GroupInfo, *mls.RatchetTree, error) {
	gi, tree, _, err := OpenRemoteTreeWith(cs, groupID, epoch, blob, EpochKey{Epoch: epoch, Key: exporterKey})
	return gi, tree, err
}

// OpenRemoteTreeWith decrypts a blob of group groupID's epoch with the
// first of keys (the remote-tree keys of epochs the caller held) under
// which it was sealed, and checks that the tree's hash equals the
// GroupInfo's tree_hash and the GroupInfo is for the group and epoch and
// signed by the tree's leaf that it names as signer. It returns the epoch
// of the key that opened it. The tree's other invariants (parent hashes,
// leaf validity) are checked when it is used, by mls.JoinGroup or
// mls.NewPublicGroupState. Errors about the blob wrap ErrRemoteTree.
func OpenRemoteTreeWith(cs mls.CipherSuite, groupID []byte, epoch uint64, blob []byte, keys ...EpochKey) (*mls.GroupInfo, *mls.RatchetTree, uint64, error) {
	if !cs.Supported() {
		return nil, nil, 0, fmt.Errorf("client: unsupported cipher suite %v", cs)
	}
	pt, under, err := openRemoteTreeBlob(cs, groupID, epoch, blob, keys)
	if err != nil {
		return nil, nil, 0, err
	}
	gi, tree, err := checkRemoteTreeContent(cs, groupID, epoch, pt)
	return gi, tree, under, err
}

// openRemoteTreeBlob decrypts blob with one of keys and returns the
// plaintext and the epoch of the key.
func openRemoteTreeBlob(cs mls.CipherSuite, groupID []byte, epoch uint64, blob []byte, keys []EpochKey) ([]byte, uint64, error) {
	nn := cs.AEADNonceSize()
	if len(blob) == 0 {
		return nil, 0, remoteTreeErrorf("the blob is empty")
	}
	switch blob[0] {
	case remoteTreeVersion1:
		if len(blob) < 1+nn {
			return nil, 0, remoteTreeErrorf("%d bytes are too short for a blob", len(blob))
		}
		tried := false
		for _, k := range keys {
			if k.Epoch != epoch {
				continue
			}
			if pt, err := cs.Open(k.Key, blob[1:1+nn], remoteTreeAAD(groupID, epoch), blob[1+nn:]); err == nil {
				return pt, epoch, nil
			}
			tried = true
		}
		if tried {
			return nil, 0, remoteTreeErrorf("does not decrypt with the key of group %x epoch %d (a blob of another group or epoch, or altered)", groupID, epoch)
		}
		return nil, 0, remoteTreeErrorf("the blob of epoch %d (version 1) opens with the key of epoch %d only", epoch, epoch)
	case remoteTreeVersion:
	default:
		return nil, 0, remoteTreeErrorf("unknown format version %d (want %d or %d); a newer client may have written it", blob[0], remoteTreeVersion1, remoteTreeVersion)
	}
	s := cryptobyte.String(blob[1:])
	var n uint8
	if !s.ReadUint8(&n) || n == 0 {
		return nil, 0, remoteTreeErrorf("the blob holds no sealing")
	}
	var under []uint64
	var failed bool
	for range n {
		var e uint64
		var nonce, ct []byte
		if !s.ReadUint64(&e) || !s.ReadBytes(&nonce, nn) || !readUint32Prefixed(&s, &ct) {
			return nil, 0, remoteTreeErrorf("the blob is malformed")
		}
		under = append(under, e)
		// Keys of one epoch number may differ (forks): try each.
		for _, k := range keys {
			if k.Epoch != e {
				continue
			}
			if pt, err := cs.Open(k.Key, nonce, remoteTreeAAD2(groupID, epoch, e), ct); err == nil {
				return pt, e, nil
			}
			failed = true
		}
	}
	if failed {
		return nil, 0, remoteTreeErrorf("does not decrypt with the keys of group %x given (a blob of another group or epoch, or altered)", groupID)
	}
	held := make([]uint64, len(keys))
	for i, k := range keys {
		held[i] = k.Epoch
	}
	return nil, 0, remoteTreeErrorf("the blob of epoch %d is sealed under the keys of epochs %v; the keys given are of epochs %v", epoch, under, held)
}

// checkRemoteTreeContent decodes and checks the plaintext of a blob.
func checkRemoteTreeContent(cs mls.CipherSuite, groupID []byte, epoch uint64, pt []byte) (*mls.GroupInfo, *mls.RatchetTree, error) {
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
