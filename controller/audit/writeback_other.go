//go:build !linux

package audit

import (
	"errors"
	"os"
)

// startWriteback is Linux's sync_file_range(2); elsewhere the kernel's
// flusher writes the trail out.
func startWriteback(*os.File, int64, int64) error {
	return errors.ErrUnsupported
}
