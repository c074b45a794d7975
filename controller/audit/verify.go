package audit

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Problem kinds Verify names.
const (
	// A record whose hash is not its content's (or the head's record
	// whose hash is not the replicated head's).
	Altered = "altered"
	// A seq absent from the trail, or a record whose prev hash is not the
	// record before it (one was removed, or replaced, in between).
	Missing = "missing"
	// A record whose seq is not above every seq before it in the file.
	Reordered = "reordered"
	// The trail ends before the replicated head.
	Truncated = "truncated"
	// A line that is not a record, or a record beyond the head.
	Unreadable = "unreadable"
	Unexpected = "unexpected"
)

// Problem is the first problem of one kind, and how many there are.
type Problem struct {
	Kind   string
	Seq    uint64
	Detail string
	Count  int
}

// Report is what Verify found.
type Report struct {
	Problems        []Problem // first of each kind, in the order found
	Records         uint64
	First, Last     uint64 // lowest and highest seq seen
	HeadSeq         uint64
	HeadHash        []byte
	ArchivedThrough uint64
}

// OK says whether the trail is whole.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

func (r *Report) add(kind string, seq uint64, format string, args ...any) {
	for i := range r.Problems {
		if r.Problems[i].Kind == kind {
			r.Problems[i].Count++
			return
		}
	}
	r.Problems = append(r.Problems, Problem{Kind: kind, Seq: seq, Detail: fmt.Sprintf(format, args...), Count: 1})
}

// maxSeqSpan bounds the seen-set when no head is known (an export file).
const maxSeqSpan = 1 << 27

// Verify checks the trail r holds against head (the replicated chain
// head; nil for a file on its own, such as an export, when only the chain
// itself is checked). It names the first altered, missing, reordered and
// truncated record, and lines that are not records.
func Verify(r io.Reader, head *statev1.AuditHead) (*Report, error) {
	rep := &Report{}
	start := uint64(1)
	var startPrev []byte
	if head != nil {
		rep.HeadSeq, rep.HeadHash, rep.ArchivedThrough = head.GetSeq(), head.GetHash(), head.GetArchivedThrough()
		start, startPrev = head.GetArchivedThrough()+1, head.GetArchivedHash()
	}
	seen := newBitset()
	var (
		prev     *statev1.AuditRecord // previous line's record
		maxSeq   uint64
		headHash []byte
		first    = true
	)
	err := ScanLines(r, func(n int, l Line, err error) (bool, error) {
		if err != nil {
			rep.add(Unreadable, maxSeq+1, "line %d is not an audit record: %v", n, err)
			prev = nil
			return true, nil
		}
		rec := l.Record()
		rep.Records++
		if first && head == nil {
			start = rec.Seq // an export or archive starts where it starts
			startPrev = rec.PrevHash
		}
		if !state.AuditHashOK(rec) {
			rep.add(Altered, rec.Seq, "record %d (line %d): its hash is not its content's: it was changed after it was written", rec.Seq, n)
		}
		switch {
		case rec.Seq < start:
			rep.add(Unexpected, rec.Seq, "record %d (line %d) is before the trail's start (%d)", rec.Seq, n, start)
		case head != nil && rec.Seq > head.GetSeq():
			rep.add(Unexpected, rec.Seq, "record %d (line %d) is beyond the replicated head (%d): no command wrote it", rec.Seq, n, head.GetSeq())
		case rec.Seq-start >= maxSeqSpan:
			rep.add(Unexpected, rec.Seq, "record %d (line %d) is far beyond the trail's start (%d)", rec.Seq, n, start)
		default:
			if seen.has(rec.Seq - start) {
				rep.add(Reordered, rec.Seq, "record %d (line %d) appears twice", rec.Seq, n)
			}
			seen.set(rec.Seq - start)
		}
		if !first && rec.Seq <= maxSeq {
			rep.add(Reordered, rec.Seq, "record %d (line %d) comes after record %d: records were moved", rec.Seq, n, maxSeq)
		}
		// The chain: a record that follows its predecessor in the file
		// names its hash; the trail's first names the archived head's.
		if prev != nil && rec.Seq == prev.Seq+1 && !bytes.Equal(rec.PrevHash, prev.Hash) {
			rep.add(Missing, rec.Seq-1, "record %d (line %d) does not chain to record %d before it: a record was removed or replaced", rec.Seq, n, prev.Seq)
		}
		if first && rec.Seq == start && !bytes.Equal(rec.PrevHash, startPrev) {
			rep.add(Missing, rec.Seq, "record %d, the trail's first, does not chain to the archived head", rec.Seq)
		}
		if head != nil && rec.Seq == head.GetSeq() {
			headHash = rec.Hash
		}
		if first || rec.Seq < rep.First {
			rep.First = rec.Seq
		}
		maxSeq = max(maxSeq, rec.Seq)
		prev, first = rec, false
		return true, nil
	})
	if err != nil {
		return rep, err
	}
	rep.Last = maxSeq
	end := maxSeq
	if head != nil {
		end = min(head.GetSeq(), max(maxSeq, start-1))
	}
	if end >= start {
		if gap, ok := seen.firstUnset(end - start + 1); ok {
			rep.add(Missing, start+gap, "record %d is missing", start+gap)
		}
	}
	if head != nil && head.GetSeq() >= start {
		switch {
		case maxSeq < head.GetSeq():
			rep.add(Truncated, maxSeq+1, "the trail ends at record %d, the replicated head is record %d: the records after %d were removed", maxSeq, head.GetSeq(), maxSeq)
		case headHash != nil && !bytes.Equal(headHash, head.GetHash()):
			rep.add(Altered, head.GetSeq(), "record %d, the head, is not the one the cluster recorded (hash %s, recorded %s)", head.GetSeq(), short(headHash), short(head.GetHash()))
		}
	}
	return rep, nil
}

func short(h []byte) string {
	s := hex.EncodeToString(h)
	if len(s) > 16 {
		s = s[:16]
	}
	return s
}

// bitset is a growable set of small integers.
type bitset []uint64

func newBitset() *bitset { return &bitset{} }

func (b *bitset) set(i uint64) {
	w := int(i / 64)
	for len(*b) <= w {
		*b = append(*b, 0)
	}
	(*b)[w] |= 1 << (i % 64)
}

func (b *bitset) has(i uint64) bool {
	w := int(i / 64)
	return w < len(*b) && (*b)[w]&(1<<(i%64)) != 0
}

// firstUnset is the lowest i < n not in the set.
func (b *bitset) firstUnset(n uint64) (uint64, bool) {
	for i := uint64(0); i < n; i++ {
		if i%64 == 0 && int(i/64) < len(*b) && (*b)[i/64] == ^uint64(0) {
			i += 63
			continue
		}
		if !b.has(i) {
			return i, true
		}
	}
	return 0, false
}
