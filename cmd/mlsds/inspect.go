package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mlsds/mlsds/mls"
)

// `mlsds inspect` decodes one MLS object and checks what can be checked
// without any group secret: signatures, KeyPackage validity, tree hash and
// parent hashes. The tree picture (drawTree) is shared with `mlsds client
// tree`.

// maxInspectInput bounds what inspect reads: far above any MLS object a
// Delivery Service accepts.
const maxInspectInput = 64 << 20

func inspectUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintln(w, "Usage: mlsds inspect [flags] [FILE]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Decodes an MLS object from FILE, or standard input without one or with \"-\": an MLSMessage")
	fmt.Fprintln(w, "(PublicMessage, PrivateMessage, Welcome, GroupInfo, KeyPackage), or a bare KeyPackage,")
	fmt.Fprintln(w, "GroupInfo, Welcome or ratchet tree (ratchet_tree extension data), as raw bytes, hex or")
	fmt.Fprintln(w, "base64 (found out by itself). Prints it, draws its ratchet tree if it has one, and checks")
	fmt.Fprintln(w, "what needs no group secret: signatures of KeyPackages, LeafNodes and GroupInfos, KeyPackage")
	fmt.Fprintln(w, "validity (RFC 9420 §10.1), tree hash and parent hashes. Exit status 1 if a check failed.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Flags:")
	fs.PrintDefaults()
}

type inspectOpts struct {
	json    bool
	tree    string
	suite   uint
	groupID string
}

func runInspect(args []string, stdout, stderr io.Writer) int {
	var o inspectOpts
	fs := flag.NewFlagSet("mlsds inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&o.json, "json", false, "print one JSON object instead of text")
	fs.StringVar(&o.tree, "tree", "", "`FILE` with the group's ratchet tree (or a GroupInfo carrying one): to check a GroupInfo without a ratchet_tree extension, or a PublicMessage's signature against the group")
	fs.UintVar(&o.suite, "suite", 0, "cipher suite of a bare ratchet tree (default: guessed from its key sizes)")
	fs.StringVar(&o.groupID, "group-id", "", "group id (hex) of a bare ratchet tree, to check the signatures of its update and commit leaves")
	fs.Usage = func() { inspectUsage(stderr, fs) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 1 {
		fmt.Fprintln(stderr, "mlsds inspect: give at most one file")
		return 2
	}
	name := "-"
	if fs.NArg() == 1 {
		name = fs.Arg(0)
	}
	data, err := readInput(name)
	if err != nil {
		fmt.Fprintf(stderr, "mlsds inspect: %v\n", err)
		return 1
	}
	in := inspectInput{suite: mls.CipherSuite(o.suite)}
	if o.groupID != "" {
		if in.groupID, err = hex.DecodeString(o.groupID); err != nil {
			fmt.Fprintf(stderr, "mlsds inspect: --group-id must be hex: %v\n", err)
			return 2
		}
	}
	if o.tree != "" {
		treeData, err := readInput(o.tree)
		if err != nil {
			fmt.Fprintf(stderr, "mlsds inspect: --tree: %v\n", err)
			return 1
		}
		if in.tree, in.treeContext, err = decodeTreeFile(treeData, in.suite); err != nil {
			fmt.Fprintf(stderr, "mlsds inspect: --tree %s: %v\n", o.tree, err)
			return 1
		}
	}
	r, err := inspect(data, in)
	if err != nil {
		fmt.Fprintf(stderr, "mlsds inspect: %v\n", err)
		return 1
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r.json()); err != nil {
			fmt.Fprintf(stderr, "mlsds inspect: %v\n", err)
			return 1
		}
	} else {
		r.writeText(stdout)
	}
	if r.failed() {
		return 1
	}
	return 0
}

func readInput(name string) ([]byte, error) {
	var r io.Reader = os.Stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxInspectInput+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxInspectInput {
		return nil, fmt.Errorf("input is larger than %s", formatByteSize(maxInspectInput))
	}
	if len(data) == 0 {
		return nil, errors.New("input is empty")
	}
	return data, nil
}

// inspectInput is what inspect knows besides the object.
type inspectInput struct {
	suite       mls.CipherSuite   // for a bare tree; 0 to guess
	groupID     []byte            // for a bare tree
	tree        *mls.RatchetTree  // --tree
	treeContext *mls.GroupContext // the GroupContext of a --tree GroupInfo
}

// encoded is the input decoded from one of the forms it may be written in.
type encoded struct {
	name string // raw, hex or base64
	data []byte
}

// decodings lists the ways the input may be written, in the order tried:
// text that is hex or base64, else raw bytes.
func decodings(data []byte) []encoded {
	var out []encoded
	text := strings.Join(strings.Fields(string(data)), "")
	if utf8.ValidString(text) && text != "" {
		t := strings.TrimPrefix(strings.TrimPrefix(text, "0x"), "0X")
		if b, err := hex.DecodeString(t); err == nil {
			out = append(out, encoded{"hex", b})
		}
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			if b, err := enc.DecodeString(text); err == nil {
				out = append(out, encoded{"base64", b})
				break
			}
		}
	}
	return append(out, encoded{"raw", data})
}

// inspect decodes data, in whichever form and of whichever type it is, and
// runs the checks. If no form decodes, the error is the first form's.
func inspect(data []byte, in inspectInput) (*report, error) {
	var firstErr error
	for _, d := range decodings(data) {
		r, err := inspectBytes(d.data, in)
		if err == nil {
			r.Encoding, r.Size = d.name, len(d.data)
			return r, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, firstErr
}

// inspectBytes decodes one MLS object: an MLSMessage, else a bare
// KeyPackage, GroupInfo, ratchet tree or Welcome.
func inspectBytes(b []byte, in inspectInput) (*report, error) {
	m, err := mls.ParseMLSMessage(b)
	if err == nil {
		r := &report{Type: "MLSMessage"}
		r.Object = r.message(m, in)
		return r, nil
	}
	r, bareErr := inspectBare(b, in)
	if bareErr == nil {
		return r, nil
	}
	if len(b) >= 4 && b[0] == 0 && b[1] == 1 && b[2] == 0 && b[3] >= 1 && b[3] <= 5 {
		// It starts as an MLSMessage does: its own error says most.
		return nil, err
	}
	return nil, bareErr
}

func inspectBare(b []byte, in inspectInput) (*report, error) {
	r := &report{}
	var kp mls.KeyPackage
	if kp.UnmarshalBinary(b) == nil {
		r.Type = "KeyPackage"
		r.Object = r.keyPackage(&kp, "")
		return r, nil
	}
	var gi mls.GroupInfo
	if gi.UnmarshalBinary(b) == nil {
		r.Type = "GroupInfo"
		r.Object = r.groupInfo(&gi, in)
		return r, nil
	}
	var ext mls.RatchetTreeExtension
	if ext.UnmarshalBinary(b) == nil {
		r.Type = "RatchetTree"
		cs := in.suite
		if cs == 0 {
			cs = guessSuite(ext.Nodes)
		}
		t, err := mls.NewRatchetTree(cs, ext.Nodes)
		if err != nil {
			return nil, fmt.Errorf("ratchet tree: %w", err)
		}
		o := new(obj).add("cipher_suite", suiteName(cs))
		if in.suite == 0 {
			o.add("cipher_suite_guessed", true)
		}
		r.Object = o
		r.checkTree("", t, in.groupID, nil, nil)
		return r, nil
	}
	var w mls.Welcome
	if w.UnmarshalBinary(b) == nil {
		r.Type = "Welcome"
		r.Object = r.welcome(&w)
		return r, nil
	}
	return nil, errors.New("not an MLS object: not an MLSMessage, KeyPackage, GroupInfo, ratchet tree or Welcome (as raw bytes, hex or base64)")
}

// decodeTreeFile reads the --tree file: a ratchet tree, or a GroupInfo
// (MLSMessage or bare) with a ratchet_tree extension, whose GroupContext
// it returns too.
func decodeTreeFile(data []byte, suite mls.CipherSuite) (*mls.RatchetTree, *mls.GroupContext, error) {
	var lastErr error
	for _, d := range decodings(data) {
		var gi *mls.GroupInfo
		if m, err := mls.ParseMLSMessage(d.data); err == nil && m.GroupInfo != nil {
			gi = m.GroupInfo
		} else if g := new(mls.GroupInfo); g.UnmarshalBinary(d.data) == nil {
			gi = g
		}
		if gi != nil {
			ext, ok := gi.Extensions.Find(mls.ExtensionTypeRatchetTree)
			if !ok {
				return nil, nil, errors.New("the GroupInfo has no ratchet_tree extension")
			}
			t, err := mls.UnmarshalRatchetTree(gi.GroupContext.CipherSuite, ext.ExtensionData)
			if err != nil {
				return nil, nil, err
			}
			gc := gi.GroupContext
			return t, &gc, nil
		}
		var ext mls.RatchetTreeExtension
		if err := ext.UnmarshalBinary(d.data); err != nil {
			lastErr = err
			continue
		}
		cs := suite
		if cs == 0 {
			cs = guessSuite(ext.Nodes)
		}
		t, err := mls.NewRatchetTree(cs, ext.Nodes)
		return t, nil, err
	}
	return nil, nil, fmt.Errorf("not a ratchet tree or a GroupInfo: %w", lastErr)
}

// guessSuite picks the cipher suite whose signature key size matches the
// first leaf's. Suites 1 and 3 (and 4 and 6) share hash and signature
// scheme, so trees and signatures check the same under either.
func guessSuite(nodes []*mls.Node) mls.CipherSuite {
	for _, n := range nodes {
		if n == nil || n.Leaf == nil {
			continue
		}
		switch len(n.Leaf.SignatureKey) {
		case 32:
			return mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
		case 65:
			return mls.MLS_128_DHKEMP256_AES128GCM_SHA256_P256
		case 57:
			return mls.MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448
		case 133:
			return mls.MLS_256_DHKEMP521_AES256GCM_SHA512_P521
		case 97:
			return mls.MLS_256_DHKEMP384_AES256GCM_SHA384_P384
		}
	}
	return mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
}

// report is the result of inspecting one object.
type report struct {
	Encoding string // raw, hex or base64
	Size     int    // bytes after decoding the encoding
	Type     string
	Object   *obj
	Tree     *treeReport
	Checks   []check
}

// check is one verification: ok, failed or skipped, and why.
type check struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
}

const (
	checkOK      = "ok"
	checkFailed  = "failed"
	checkSkipped = "skipped"
)

func (r *report) check(name string, err error) {
	if err != nil {
		r.Checks = append(r.Checks, check{Name: name, Status: checkFailed, Reason: err.Error()})
		return
	}
	r.Checks = append(r.Checks, check{Name: name, Status: checkOK})
}

func (r *report) skip(name, reason string) {
	r.Checks = append(r.Checks, check{Name: name, Status: checkSkipped, Reason: reason})
}

func (r *report) failed() bool {
	for _, c := range r.Checks {
		if c.Status == checkFailed {
			return true
		}
	}
	return false
}

// treeReport is a ratchet tree found in or given with the object.
type treeReport struct {
	CipherSuite string      `json:"cipher_suite"`
	Leaves      uint32      `json:"leaves"`
	Members     uint32      `json:"members"`
	TreeHash    string      `json:"tree_hash"`
	Nodes       []*treeNode `json:"nodes"`
	Picture     string      `json:"picture"`
}

func (r *report) json() any {
	out := new(obj).add("encoding", r.Encoding).add("size", r.Size).add("type", r.Type).add("object", r.Object)
	if r.Tree != nil {
		out.add("tree", r.Tree)
	}
	checks := r.Checks
	if checks == nil {
		checks = []check{}
	}
	return out.add("checks", checks)
}

func (r *report) writeText(w io.Writer) {
	fmt.Fprintf(w, "%s (%d bytes, %s)\n", r.Type, r.Size, r.Encoding)
	r.Object.writeText(w, "  ")
	if r.Tree != nil {
		fmt.Fprintln(w)
		fmt.Fprint(w, r.Tree.Picture)
	}
	fmt.Fprintln(w)
	if len(r.Checks) == 0 {
		fmt.Fprintln(w, "checks: none possible without the group's secrets")
		return
	}
	fmt.Fprintln(w, "checks:")
	for _, c := range r.Checks {
		line := fmt.Sprintf("  %-8s %s", c.Status, c.Name)
		if c.Reason != "" {
			line += ": " + c.Reason
		}
		fmt.Fprintln(w, line)
	}
}

// obj is an object with its fields in order, printed as text or JSON.
// Values are strings, numbers, bools, blob, *obj, []*obj or []string.
type obj struct{ fields []objField }

type objField struct {
	key string
	val any
}

func (o *obj) add(key string, val any) *obj {
	o.fields = append(o.fields, objField{key, val})
	return o
}

func (o *obj) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range o.fields {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.key)
		b.Write(k)
		b.WriteByte(':')
		v, err := json.Marshal(f.val)
		if err != nil {
			return nil, err
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func (o *obj) writeText(w io.Writer, indent string) {
	for _, f := range o.fields {
		label := strings.ReplaceAll(f.key, "_", " ")
		switch v := f.val.(type) {
		case *obj:
			fmt.Fprintf(w, "%s%s:\n", indent, label)
			v.writeText(w, indent+"  ")
		case []*obj:
			if len(v) == 0 {
				fmt.Fprintf(w, "%s%s: none\n", indent, label)
				continue
			}
			fmt.Fprintf(w, "%s%s: %d\n", indent, label, len(v))
			for i, e := range v {
				fmt.Fprintf(w, "%s  [%d]\n", indent, i)
				e.writeText(w, indent+"    ")
			}
		case []string:
			s := strings.Join(v, ", ")
			if len(v) == 0 {
				s = "none"
			}
			fmt.Fprintf(w, "%s%s: %s\n", indent, label, s)
		default:
			fmt.Fprintf(w, "%s%s: %v\n", indent, label, v)
		}
	}
}

// blob is opaque bytes: hex in JSON, and in text too, cut short past 32
// bytes.
type blob []byte

func (b blob) MarshalJSON() ([]byte, error) { return json.Marshal(hex.EncodeToString(b)) }

func (b blob) String() string {
	if len(b) == 0 {
		return "(empty)"
	}
	if len(b) <= 32 {
		return hex.EncodeToString(b)
	}
	return fmt.Sprintf("%s… (%d bytes)", hex.EncodeToString(b[:16]), len(b))
}

func suiteName(cs mls.CipherSuite) string {
	return fmt.Sprintf("%d (%s)", uint16(cs), cs)
}

func senderString(s mls.Sender) string {
	switch s.SenderType {
	case mls.SenderTypeMember:
		return fmt.Sprintf("member, leaf %d", s.LeafIndex)
	case mls.SenderTypeExternal:
		return fmt.Sprintf("external sender %d", s.SenderIndex)
	case mls.SenderTypeNewMemberProposal:
		return "new member (proposal)"
	case mls.SenderTypeNewMemberCommit:
		return "new member (external Commit)"
	}
	return "SenderType(" + strconv.Itoa(int(s.SenderType)) + ")"
}

func sourceString(s mls.LeafNodeSource) string {
	switch s {
	case mls.LeafNodeSourceKeyPackage:
		return "key_package"
	case mls.LeafNodeSourceUpdate:
		return "update"
	case mls.LeafNodeSourceCommit:
		return "commit"
	}
	return "LeafNodeSource(" + strconv.Itoa(int(s)) + ")"
}

// credentialString names who a credential says the member is: the identity
// of a basic credential (quoted if it is not plain text), the subject of
// an x509 one.
func credentialString(c *mls.Credential) string {
	switch c.CredentialType {
	case mls.CredentialTypeBasic:
		return identityString(c.Identity)
	case mls.CredentialTypeX509:
		if len(c.Certificates) == 0 {
			return "x509 (no certificate)"
		}
		cert, err := x509.ParseCertificate(c.Certificates[0])
		if err != nil {
			return fmt.Sprintf("x509 (%d certificates; the first does not parse)", len(c.Certificates))
		}
		return "x509 " + identityString([]byte(cert.Subject.String()))
	}
	return "credential type " + strconv.Itoa(int(c.CredentialType))
}

// identityString prints an identity as it is if it is short printable
// text, quoted if it needs escapes, else in hex.
func identityString(id []byte) string {
	if len(id) == 0 {
		return `""`
	}
	if !utf8.Valid(id) {
		return "0x" + hex.EncodeToString(id)
	}
	s := string(id)
	for _, r := range s {
		if !unicode.IsPrint(r) || r == ' ' || r == '"' {
			return strconv.Quote(s)
		}
	}
	return s
}

func extensionsObj(es mls.Extensions) []*obj {
	out := []*obj{}
	for _, e := range es {
		out = append(out, new(obj).add("type", e.ExtensionType.String()).add("data", blob(e.ExtensionData)))
	}
	return out
}

func (r *report) message(m *mls.MLSMessage, in inspectInput) *obj {
	o := new(obj).add("version", "mls10").add("wire_format", m.WireFormat.String())
	switch m.WireFormat {
	case mls.WireFormatPublicMessage:
		o.add("public_message", r.publicMessage(m.PublicMessage, in))
	case mls.WireFormatPrivateMessage:
		p := m.PrivateMessage
		o.add("private_message", new(obj).
			add("group_id", blob(p.GroupID)).
			add("epoch", p.Epoch).
			add("content_type", p.ContentType.String()).
			add("authenticated_data", blob(p.AuthenticatedData)).
			add("encrypted_sender_data", blob(p.EncryptedSenderData)).
			add("ciphertext", blob(p.Ciphertext)))
	case mls.WireFormatWelcome:
		o.add("welcome", r.welcome(m.Welcome))
	case mls.WireFormatGroupInfo:
		o.add("group_info", r.groupInfo(m.GroupInfo, in))
	case mls.WireFormatKeyPackage:
		o.add("key_package", r.keyPackage(m.KeyPackage, ""))
	}
	return o
}

func (r *report) welcome(w *mls.Welcome) *obj {
	joiners := []string{}
	for _, ref := range w.Joiners() {
		joiners = append(joiners, hex.EncodeToString(ref))
	}
	return new(obj).
		add("cipher_suite", suiteName(w.CipherSuite)).
		add("new_members", joiners).
		add("encrypted_group_info", blob(w.EncryptedGroupInfo))
}

func (r *report) leafNode(ln *mls.LeafNode) *obj {
	o := new(obj).
		add("identity", credentialString(&ln.Credential)).
		add("encryption_key", blob(ln.EncryptionKey)).
		add("signature_key", blob(ln.SignatureKey)).
		add("source", sourceString(ln.LeafNodeSource))
	if ln.Lifetime != nil {
		o.add("not_before", timeString(ln.Lifetime.NotBefore)).add("not_after", timeString(ln.Lifetime.NotAfter))
	}
	if ln.LeafNodeSource == mls.LeafNodeSourceCommit {
		o.add("parent_hash", blob(ln.ParentHash))
	}
	suites := []string{}
	for _, cs := range ln.Capabilities.CipherSuites {
		suites = append(suites, strconv.Itoa(int(cs)))
	}
	exts := []string{}
	for _, e := range ln.Capabilities.Extensions {
		exts = append(exts, e.String())
	}
	props := []string{}
	for _, p := range ln.Capabilities.Proposals {
		props = append(props, p.String())
	}
	o.add("capabilities", new(obj).add("cipher_suites", suites).add("extensions", exts).add("proposals", props))
	if len(ln.Extensions) > 0 {
		o.add("extensions", extensionsObj(ln.Extensions))
	}
	return o.add("signature", blob(ln.Signature))
}

func timeString(secs uint64) string {
	if secs > 1<<40 {
		return strconv.FormatUint(secs, 10) + " (never)"
	}
	return time.Unix(int64(secs), 0).UTC().Format(time.RFC3339)
}

// keyPackage describes kp and checks it, naming the checks after what
// (e.g. "Add 1: ").
func (r *report) keyPackage(kp *mls.KeyPackage, what string) *obj {
	o := new(obj).add("cipher_suite", suiteName(kp.CipherSuite))
	if ref, err := kp.Ref(); err == nil {
		o.add("ref", blob(ref))
	}
	o.add("init_key", blob(kp.InitKey)).add("leaf_node", r.leafNode(&kp.LeafNode))
	if len(kp.Extensions) > 0 {
		o.add("extensions", extensionsObj(kp.Extensions))
	}
	o.add("signature", blob(kp.Signature))
	if !kp.CipherSuite.Supported() {
		r.skip(what+"KeyPackage signature", fmt.Sprintf("cipher suite %d is not supported", uint16(kp.CipherSuite)))
		return o
	}
	r.check(what+"KeyPackage signature", kp.VerifySignature())
	r.check(what+"leaf node signature", kp.LeafNode.VerifySignature(kp.CipherSuite, nil, 0))
	r.check(what+"KeyPackage valid now (RFC 9420 §10.1)", mls.ValidateKeyPackage(kp, time.Now(), 0))
	return o
}

func (r *report) groupInfo(gi *mls.GroupInfo, in inspectInput) *obj {
	gc := &gi.GroupContext
	o := new(obj).add("group_context", groupContextObj(gc)).
		add("extensions", extensionsObj(gi.Extensions)).
		add("confirmation_tag", blob(gi.ConfirmationTag)).
		add("signer", uint32(gi.Signer)).
		add("signature", blob(gi.Signature))
	cs := gc.CipherSuite
	if !cs.Supported() {
		r.skip("GroupInfo signature", fmt.Sprintf("cipher suite %d is not supported", uint16(cs)))
		return o
	}
	if _, ok := gi.Extensions.Find(mls.ExtensionTypeExternalPub); ok {
		r.check("external_pub extension", mls.ValidateGroupInfoExternalPub(gi))
	}
	tree, where := in.tree, "--tree"
	if ext, ok := gi.Extensions.Find(mls.ExtensionTypeRatchetTree); ok {
		t, err := mls.UnmarshalRatchetTree(cs, ext.ExtensionData)
		r.check("ratchet_tree extension decodes", err)
		if err != nil {
			return o
		}
		tree, where = t, "ratchet_tree extension"
	}
	if tree == nil {
		r.skip("GroupInfo signature", "needs the signer's key: the GroupInfo has no ratchet_tree extension; give the tree with --tree")
		return o
	}
	o.add("tree_from", where)
	if signer := tree.Leaf(gi.Signer); signer == nil {
		r.check("GroupInfo signature", fmt.Errorf("signer leaf %d is blank or outside the tree", gi.Signer))
	} else {
		r.check("GroupInfo signature", gi.VerifySignature(signer.SignatureKey))
	}
	r.checkTree(where, tree, gc.GroupID, gc.TreeHash, map[mls.LeafIndex]string{gi.Signer: "signer"})
	_, err := mls.NewPublicGroupState(gi, tree)
	r.check("group state a joiner accepts (RFC 9420 §12.4.3.1)", err)
	return o
}

func groupContextObj(gc *mls.GroupContext) *obj {
	return new(obj).
		add("cipher_suite", suiteName(gc.CipherSuite)).
		add("group_id", blob(gc.GroupID)).
		add("epoch", gc.Epoch).
		add("tree_hash", blob(gc.TreeHash)).
		add("confirmed_transcript_hash", blob(gc.ConfirmedTranscriptHash)).
		add("extensions", extensionsObj(gc.Extensions))
}

// checkTree draws t into the report and checks its leaf signatures (the
// update and commit leaves need groupID), its parent hashes, the rest of
// §7.9.2 and §12.4.3.1 that RatchetTree.Verify checks, and its tree hash
// against wantHash if given.
func (r *report) checkTree(where string, t *mls.RatchetTree, groupID, wantHash []byte, marks map[mls.LeafIndex]string) {
	r.Tree = newTreeReport(t, marks)
	prefix := "tree: "
	if wantHash != nil {
		r.check(prefix+"tree hash matches GroupContext.tree_hash", func() error {
			if !bytes.Equal(t.TreeHash(), wantHash) {
				return fmt.Errorf("the tree (%s) hashes to %x, the GroupContext says %x", where, t.TreeHash(), wantHash)
			}
			return nil
		}())
	}
	var bad []string
	checked, unbound := 0, 0
	for i, ln := range t.Leaves() {
		if groupID == nil && ln.LeafNodeSource != mls.LeafNodeSourceKeyPackage {
			unbound++
			continue
		}
		checked++
		if err := ln.VerifySignature(t.CipherSuite(), groupID, i); err != nil {
			bad = append(bad, fmt.Sprintf("leaf %d (%s): %v", i, credentialString(&ln.Credential), err))
		}
	}
	name := fmt.Sprintf("%sleaf signatures (%s)", prefix, plural(checked, "leaf", "leaves"))
	unboundWhy := fmt.Sprintf("%s of source update or commit sign the group id: give --group-id", plural(unbound, "leaf", "leaves"))
	switch {
	case len(bad) > 0:
		r.check(name, errors.New(strings.Join(bad, "; ")))
	case unbound > 0 && checked == 0:
		r.skip(prefix+"leaf signatures", unboundWhy)
	default:
		r.check(name, nil)
		if unbound > 0 {
			r.skip(prefix+"signatures of update and commit leaves", unboundWhy)
		}
	}
	r.check(prefix+"parent hashes (RFC 9420 §7.9.2)", t.VerifyParentHashes())
	if groupID != nil || unbound == 0 {
		r.check(prefix+"valid (unmerged leaves, unique keys, signatures, parent hashes)", t.Verify(groupID))
	}
}

func (r *report) publicMessage(m *mls.PublicMessage, in inspectInput) *obj {
	fc := &m.Content
	o := new(obj).
		add("group_id", blob(fc.GroupID)).
		add("epoch", fc.Epoch).
		add("sender", senderString(fc.Sender)).
		add("authenticated_data", blob(fc.AuthenticatedData)).
		add("content_type", fc.ContentType.String())
	cs := mls.CipherSuite(0)
	if in.treeContext != nil {
		cs = in.treeContext.CipherSuite
	}
	switch fc.ContentType {
	case mls.ContentTypeApplication:
		o.add("application_data", blob(fc.Application))
	case mls.ContentTypeProposal:
		o.add("proposal", r.proposal(fc.Proposal, "proposal: ", fc, cs))
	case mls.ContentTypeCommit:
		c := new(obj)
		props := []*obj{}
		for i, p := range fc.Commit.Proposals {
			if p.Type == mls.ProposalOrRefTypeReference {
				props = append(props, new(obj).add("by", "reference").add("ref", blob(p.Reference)))
				continue
			}
			props = append(props, r.proposal(p.Proposal, fmt.Sprintf("proposal %d: ", i), fc, cs).add("by", "value"))
		}
		c.add("proposals", props)
		if path := fc.Commit.Path; path != nil {
			c.add("path", new(obj).add("leaf_node", r.leafNode(&path.LeafNode)).add("nodes", len(path.Nodes)))
			r.pathLeafCheck(&path.LeafNode, fc, cs)
		} else {
			c.add("path", "none")
		}
		o.add("commit", c)
	}
	o.add("signature", blob(m.Auth.Signature))
	if fc.ContentType == mls.ContentTypeCommit {
		o.add("confirmation_tag", blob(m.Auth.ConfirmationTag))
	}
	if fc.Sender.SenderType == mls.SenderTypeMember {
		o.add("membership_tag", blob(m.MembershipTag))
	}
	r.messageSignature(m, in)
	return o
}

// pathLeafCheck checks the signature of a Commit's UpdatePath leaf, which
// signs the group id and the committer's leaf index (§7.2). The suite
// comes from --tree, or is guessed from the key size.
func (r *report) pathLeafCheck(ln *mls.LeafNode, fc *mls.FramedContent, cs mls.CipherSuite) {
	if cs == 0 {
		cs = guessSuite([]*mls.Node{{Leaf: ln}})
	}
	switch fc.Sender.SenderType {
	case mls.SenderTypeMember:
		r.check("UpdatePath leaf node signature", ln.VerifySignature(cs, fc.GroupID, fc.Sender.LeafIndex))
	default:
		r.skip("UpdatePath leaf node signature", "the leaf index of a new member's leaf comes from the group's tree")
	}
}

func (r *report) proposal(p *mls.Proposal, what string, fc *mls.FramedContent, cs mls.CipherSuite) *obj {
	o := new(obj).add("type", p.ProposalType.String())
	switch p.ProposalType {
	case mls.ProposalTypeAdd:
		o.add("key_package", r.keyPackage(&p.Add.KeyPackage, what))
	case mls.ProposalTypeUpdate:
		o.add("leaf_node", r.leafNode(&p.Update.LeafNode))
		if cs == 0 {
			cs = guessSuite([]*mls.Node{{Leaf: &p.Update.LeafNode}})
		}
		if fc.Sender.SenderType == mls.SenderTypeMember {
			r.check(what+"Update leaf node signature", p.Update.LeafNode.VerifySignature(cs, fc.GroupID, fc.Sender.LeafIndex))
		}
	case mls.ProposalTypeRemove:
		o.add("removed", uint32(p.Remove.Removed))
	case mls.ProposalTypePSK:
		id := &p.PreSharedKey.PSK
		if len(id.PSKID) > 0 {
			o.add("psk_id", blob(id.PSKID))
		} else {
			o.add("psk_group_id", blob(id.PSKGroupID)).add("psk_epoch", id.PSKEpoch)
		}
	case mls.ProposalTypeReInit:
		o.add("group_id", blob(p.ReInit.GroupID)).add("cipher_suite", suiteName(p.ReInit.CipherSuite))
	case mls.ProposalTypeExternalInit:
		o.add("kem_output", blob(p.ExternalInit.KEMOutput))
	case mls.ProposalTypeGroupContextExtensions:
		o.add("extensions", extensionsObj(p.GroupContextExtensions.Extensions))
	default:
		o.add("body", blob(p.Unknown))
	}
	return o
}

// messageSignature checks a PublicMessage's signature when --tree gave the
// GroupContext of the message's epoch and the sender's leaf.
func (r *report) messageSignature(m *mls.PublicMessage, in inspectInput) {
	const name = "message signature"
	fc := &m.Content
	gc := in.treeContext
	switch {
	case gc == nil || in.tree == nil:
		r.skip(name, "needs the group's GroupContext and the sender's key: give --tree with a GroupInfo of the message's epoch")
		return
	case !bytes.Equal(gc.GroupID, fc.GroupID) || gc.Epoch != fc.Epoch:
		r.skip(name, fmt.Sprintf("the --tree GroupInfo is of epoch %d of group %x, the message of epoch %d of group %x", gc.Epoch, gc.GroupID, fc.Epoch, fc.GroupID))
		return
	case fc.Sender.SenderType != mls.SenderTypeMember:
		r.skip(name, "only a member sender's key is in the tree")
		return
	}
	leaf := in.tree.Leaf(fc.Sender.LeafIndex)
	if leaf == nil {
		r.check(name, fmt.Errorf("sender leaf %d is blank or outside the tree", fc.Sender.LeafIndex))
		return
	}
	r.check(name, m.AuthenticatedContent().VerifySignature(gc.CipherSuite, leaf.SignatureKey, gc))
}

// treeNode is one node of a tree report.
type treeNode struct {
	Node     uint32   `json:"node"`
	Kind     string   `json:"kind"` // leaf, parent, blank
	Leaf     *uint32  `json:"leaf,omitempty"`
	Identity string   `json:"identity,omitempty"`
	Mark     string   `json:"mark,omitempty"`
	Key      string   `json:"encryption_key,omitempty"`
	Unmerged []uint32 `json:"unmerged_leaves,omitempty"`
}

func newTreeReport(t *mls.RatchetTree, marks map[mls.LeafIndex]string) *treeReport {
	tr := &treeReport{
		CipherSuite: suiteName(t.CipherSuite()),
		Leaves:      t.LeafCount(),
		Members:     t.MemberCount(),
		TreeHash:    hex.EncodeToString(t.TreeHash()),
		Nodes:       []*treeNode{},
		Picture:     drawTree(t, marks),
	}
	end := uint32(len(t.Nodes()))
	for x := uint32(0); x < 2*t.LeafCount()-1; x++ {
		n := &treeNode{Node: x, Kind: "blank"}
		if x%2 == 0 {
			i := x / 2
			n.Leaf = &i
			if ln := t.Leaf(mls.LeafIndex(i)); ln != nil {
				n.Kind, n.Identity, n.Key = "leaf", credentialString(&ln.Credential), hex.EncodeToString(ln.EncryptionKey)
				n.Mark = marks[mls.LeafIndex(i)]
			}
		} else if p := t.Parent(mls.NodeIndex(x)); p != nil {
			n.Kind, n.Key = "parent", hex.EncodeToString(p.EncryptionKey)
			for _, l := range p.UnmergedLeaves {
				n.Unmerged = append(n.Unmerged, uint32(l))
			}
		}
		if x >= end {
			continue // the padding of a full tree
		}
		tr.Nodes = append(tr.Nodes, n)
	}
	return tr
}

// drawTree returns a picture of t, its root at the top and its leaves in
// order, as the `tree` command draws directories: every node with its
// index in array order (RFC 9420 Appendix C), parents with the leaves
// they list as unmerged, leaves with the identity of their credential,
// blank nodes as such, and each subtree of blank nodes only as one line.
// marks add a note to leaves ("you", "signer").
func drawTree(t *mls.RatchetTree, marks map[mls.LeafIndex]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "ratchet tree: %d members in %d leaves, cipher suite %d\n", t.MemberCount(), t.LeafCount(), uint16(t.CipherSuite()))
	unmergedAt := map[mls.LeafIndex][]uint32{}
	width := 2*t.LeafCount() - 1
	for x := uint32(1); x < width; x += 2 {
		if p := t.Parent(mls.NodeIndex(x)); p != nil {
			for _, l := range p.UnmergedLeaves {
				unmergedAt[l] = append(unmergedAt[l], x)
			}
		}
	}
	root := uint32(1)<<bitsLen(width) - 1
	if t.LeafCount() == 1 {
		root = 0
	}
	var walk func(x uint32, prefix, branch, next string)
	walk = func(x uint32, prefix, branch, next string) {
		b.WriteString(prefix + branch + nodeLabel(t, x, unmergedAt, marks) + "\n")
		if x%2 == 0 || subtreeBlank(t, x) {
			return
		}
		k := level(x)
		walk(x^(1<<(k-1)), prefix+next, "├── ", "│   ")
		walk(x^(3<<(k-1)), prefix+next, "└── ", "    ")
	}
	walk(root, "", "", "")
	return b.String()
}

// bitsLen is the number of bits below the top bit of w, so that
// 1<<bitsLen(w) - 1 is the root of a tree of width w.
func bitsLen(w uint32) uint32 {
	n := uint32(0)
	for (uint32(1) << (n + 1)) <= w {
		n++
	}
	return n
}

// level is the height of node x above the leaves.
func level(x uint32) uint32 {
	k := uint32(0)
	for x&1 == 1 {
		x >>= 1
		k++
	}
	return k
}

// subtreeBlank reports whether every node under and at x is blank.
func subtreeBlank(t *mls.RatchetTree, x uint32) bool {
	k := level(x)
	lo, hi := x-(1<<k-1), x+(1<<k-1)
	for y := lo; y <= hi; y++ {
		if !t.IsBlank(mls.NodeIndex(y)) {
			return false
		}
	}
	return true
}

func nodeLabel(t *mls.RatchetTree, x uint32, unmergedAt map[mls.LeafIndex][]uint32, marks map[mls.LeafIndex]string) string {
	if x%2 == 0 {
		i := mls.LeafIndex(x / 2)
		ln := t.Leaf(i)
		if ln == nil {
			return fmt.Sprintf("%d leaf %d: blank", x, i)
		}
		s := fmt.Sprintf("%d leaf %d: %s", x, i, credentialString(&ln.Credential))
		var notes []string
		if m := marks[i]; m != "" {
			notes = append(notes, m)
		}
		if at := unmergedAt[i]; len(at) > 0 {
			notes = append(notes, "unmerged at "+joinUints(at))
		}
		if len(notes) > 0 {
			s += " (" + strings.Join(notes, ", ") + ")"
		}
		return s
	}
	if subtreeBlank(t, x) {
		k := level(x)
		first, last := (x-(1<<k-1))/2, (x+(1<<k-1))/2
		return fmt.Sprintf("%d blank, leaves %d-%d blank", x, first, last)
	}
	p := t.Parent(mls.NodeIndex(x))
	if p == nil {
		return fmt.Sprintf("%d blank", x)
	}
	s := fmt.Sprintf("%d parent", x)
	if len(p.UnmergedLeaves) > 0 {
		ls := make([]uint32, len(p.UnmergedLeaves))
		for j, l := range p.UnmergedLeaves {
			ls[j] = uint32(l)
		}
		s += ", unmerged leaves " + joinUints(ls)
	}
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

func joinUints(v []uint32) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatUint(uint64(x), 10)
	}
	return strings.Join(s, ", ")
}

// clientTree is `mlsds client tree <group>`: the member's own tree of the
// group, drawn as inspect draws trees, with the member's leaf marked.
func clientTree(ctx context.Context, s *clientSession, args []string) error {
	g, err := s.findGroup(ctx, args[0])
	if err != nil {
		return err
	}
	data, err := g.GroupInfo()
	if err != nil {
		return err
	}
	m, err := mls.ParseMLSMessage(data)
	if err != nil || m.GroupInfo == nil {
		return fmt.Errorf("reading your own GroupInfo of %s: %v", s.labels.name(g.ID()), err)
	}
	gi := m.GroupInfo
	ext, ok := gi.Extensions.Find(mls.ExtensionTypeRatchetTree)
	if !ok {
		return errors.New("your GroupInfo has no ratchet tree")
	}
	tree, err := mls.UnmarshalRatchetTree(gi.GroupContext.CipherSuite, ext.ExtensionData)
	if err != nil {
		return err
	}
	marks := map[mls.LeafIndex]string{gi.Signer: "you"}
	s.out.mu.Lock()
	defer s.out.mu.Unlock()
	if s.opts.json {
		return json.NewEncoder(s.stdout).Encode(struct {
			Group   string      `json:"group"`
			GroupID string      `json:"group_id"`
			Epoch   uint64      `json:"epoch"`
			Tree    *treeReport `json:"tree"`
		}{s.labels.name(g.ID()), hex.EncodeToString(g.ID()), gi.GroupContext.Epoch, newTreeReport(tree, marks)})
	}
	fmt.Fprintf(s.stdout, "%s, epoch %d\n%s", s.labels.name(g.ID()), gi.GroupContext.Epoch, drawTree(tree, marks))
	return nil
}
