package libvirt

import (
	"context"
	"fmt"

	lv "libvirt.org/go/libvirt"

	"github.com/yunchi/yunchi/agent"
)

// statsTypes are the groups of libvirt's bulk domain stats that Usage is
// made of.
const statsTypes = lv.DOMAIN_STATS_STATE | lv.DOMAIN_STATS_CPU_TOTAL | lv.DOMAIN_STATS_BALLOON |
	lv.DOMAIN_STATS_INTERFACE | lv.DOMAIN_STATS_BLOCK

// Stats implements agent.Driver: one bulk stats call for the active
// domains, kept for the managed ones. NOWAIT: a domain busy with a job
// (a shutdown, a block job) reports what it can at once, with the stats
// that need its monitor missing (zero), rather than holding up the call.
func (d *Driver) Stats(ctx context.Context) (map[string]agent.Usage, error) {
	out := map[string]agent.Usage{}
	err := d.withConn(func(conn *lv.Connect) error {
		stats, err := conn.GetAllDomainStats(nil, statsTypes,
			lv.CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE|lv.CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
		if isCode(err, lv.ERR_INVALID_ARG, lv.ERR_NO_SUPPORT) {
			// Older drivers refuse NOWAIT; they wait.
			stats, err = conn.GetAllDomainStats(nil, statsTypes, lv.CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
		}
		if err != nil {
			return wrap("domain stats", err)
		}
		defer func() {
			for i := range stats {
				stats[i].Domain.Free()
			}
		}()
		for i := range stats {
			m, ok, err := readMetadata(stats[i].Domain)
			if isCode(err, lv.ERR_NO_DOMAIN) {
				continue // undefined meanwhile
			}
			if err != nil {
				name, _ := stats[i].Domain.GetName()
				return fmt.Errorf("domain %s: %w", name, err)
			}
			if ok {
				out[m.ID] = usageOf(&stats[i])
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// usageOf sums a domain's stats into Usage: disks and interfaces added up,
// balloon sizes from KiB to bytes; what libvirt did not report stays zero.
func usageOf(s *lv.DomainStats) agent.Usage {
	var u agent.Usage
	if c := s.Cpu; c != nil && c.TimeSet {
		u.CPUTimeNs = c.Time
	}
	if b := s.Balloon; b != nil {
		if b.CurrentSet {
			u.MemoryBytes = kibToBytes(b.Current)
		}
		if b.UnusedSet {
			u.MemoryUnusedBytes = kibToBytes(b.Unused)
		}
	}
	// One entry per disk: backing files are listed only with the
	// STATS_BACKING flag, which is not asked for.
	for _, b := range s.Block {
		u.DiskReadBytes += b.RdBytes
		u.DiskWriteBytes += b.WrBytes
	}
	for _, n := range s.Net {
		u.NetRxBytes += n.RxBytes
		u.NetTxBytes += n.TxBytes
	}
	return u
}

// kibToBytes converts without overflowing int64.
func kibToBytes(kib uint64) int64 {
	const limit = uint64(1<<63-1) / 1024
	if kib > limit {
		return 1<<63 - 1
	}
	return int64(kib * 1024)
}
