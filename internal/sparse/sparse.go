// Package sparse reads sparse files the way disk copies need: where the
// data is (SEEK_DATA, SEEK_HOLE) and whether a piece holds only zeroes, so
// that a copy writes holes as holes.
package sparse

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// NextData is the next extent of data of f at or after off, ending at a
// hole or at size ([size, size) when only holes are left). A file system
// that cannot say where holes are has the whole rest as data.
func NextData(f *os.File, off, size int64) (data, end int64, err error) {
	data, err = unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return size, size, nil
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP):
		return off, size, nil
	case err != nil:
		return 0, 0, err
	}
	hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
	if err != nil {
		return 0, 0, err
	}
	return min(data, size), min(hole, size), nil
}

// IsZero reports whether p holds only zero bytes.
func IsZero(p []byte) bool {
	for len(p) >= 8 {
		if p[0]|p[1]|p[2]|p[3]|p[4]|p[5]|p[6]|p[7] != 0 {
			return false
		}
		p = p[8:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}
