package libvirt

// Placeholders while the events, console and stats are being written
// (issue 10); each moves to its own file.

import (
	"context"
	"errors"
	"io"

	"github.com/yunchi/yunchi/agent"
)

// Events implements agent.Driver.
func (d *Driver) Events(ctx context.Context) (<-chan agent.DomainEvent, error) {
	return nil, agent.ErrNoEvents
}

// OpenConsole implements agent.Driver.
func (d *Driver) OpenConsole(ctx context.Context, vmID string) (io.ReadWriteCloser, error) {
	return nil, errors.New("console: not implemented yet")
}

// Stats implements agent.Driver.
func (d *Driver) Stats(ctx context.Context) (map[string]agent.Usage, error) {
	return nil, errors.New("stats: not implemented yet")
}
