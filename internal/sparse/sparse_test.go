package sparse

import (
	"os"
	"path/filepath"
	"testing"
)

// A file with data at 1 MiB and 3 MiB in a 4 MiB hole: NextData finds each
// extent (as the file system rounds it) and then the end; IsZero tells a
// zero piece from one with a single byte set.
func TestNextDataAndIsZero(t *testing.T) {
	const mib = 1 << 20
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(4 * mib); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{mib, 3 * mib} {
		if _, err := f.WriteAt([]byte{1}, off); err != nil {
			t.Fatal(err)
		}
	}
	var found []int64
	for off := int64(0); off < 4*mib; {
		data, end, err := NextData(f, off, 4*mib)
		if err != nil {
			t.Fatal(err)
		}
		if data >= 4*mib {
			break
		}
		if end <= data || end > 4*mib {
			t.Fatalf("extent [%d, %d)", data, end)
		}
		found = append(found, data)
		off = end
	}
	if len(found) == 0 || found[0] > mib {
		t.Fatalf("data extents start at %v, want the first at or before 1 MiB", found)
	}
	p := make([]byte, 4096+3)
	if !IsZero(p) {
		t.Error("zeroes are not zero")
	}
	p[len(p)-1] = 1
	if IsZero(p) {
		t.Error("a set last byte reads as zero")
	}
}
