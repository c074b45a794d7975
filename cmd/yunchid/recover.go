package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/yunchi/yunchi/controller"
	"github.com/yunchi/yunchi/controller/audit"
	"github.com/yunchi/yunchi/controller/raftnode"
	"github.com/yunchi/yunchi/controller/state"
	"github.com/yunchi/yunchi/internal/pki"
)

// recoverCmd is `yunchid controller recover`: after site A (two of the
// three voters) is lost for good, it builds in a new data dir a
// one-controller cluster holding the state of a copy (kept by the remote
// center's controller, see --dr-snapshot-interval) or of a surviving
// controller's data dir. `yunchid controller --data-dir NEW ...` then runs
// as its leader.
func recoverCmd() *cli.Command {
	return &cli.Command{
		Name:  "recover",
		Usage: "after losing the quorum for good (site A lost): make a new data dir holding a one-controller cluster with the state of a DR copy or of a surviving controller's data dir",
		Description: "Exactly one of --from-snapshot and --from-data-dir. The source is read, never changed. Stop the controller whose data dir\n" +
			"is read, and make sure the lost controllers cannot start again on their old data dirs (docs/dr.md, \"Losing site A\").",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data-dir", Required: true, Usage: "the NEW data dir to make (absent or empty)"},
			&cli.StringFlag{Name: "from-snapshot", Usage: "a state copy (FILE), or the directory of copies (its newest copy that verifies), e.g. <old data-dir>/dr-snapshots"},
			&cli.StringFlag{Name: "from-data-dir", Usage: "a stopped controller's data dir: its snapshot and every log entry after it (read, not changed)"},
			&cli.StringFlag{Name: "id", Usage: "the recovered controller's id (default: the controller that took the copy; with --from-data-dir, the one its certificate names)"},
			&cli.StringFlag{Name: "raft-listen", Usage: "raft address the recovered controller will listen on (default: the one the source's configuration gives --id)"},
			&cli.StringFlag{Name: "raft-advertise", Usage: "raft address others dial, if not --raft-listen"},
			&cli.StringFlag{Name: "tls-from", Usage: "directory holding the cluster CA and this controller's certificate, copied into NEW/tls (default with --from-data-dir: its tls/)"},
			&cli.BoolFlag{Name: "insecure", Usage: "the cluster runs plaintext (--insecure): no TLS material to copy"},
		},
		Action: func(c *cli.Context) error {
			return runRecover(recoverArgs{
				DataDir: c.String("data-dir"), FromSnapshot: c.String("from-snapshot"), FromDataDir: c.String("from-data-dir"),
				ID: c.String("id"), RaftListen: c.String("raft-listen"), RaftAdvertise: c.String("raft-advertise"),
				TLSFrom: c.String("tls-from"), Insecure: c.Bool("insecure"), Out: c.App.Writer,
			})
		},
	}
}

type recoverArgs struct {
	DataDir, FromSnapshot, FromDataDir string
	ID, RaftListen, RaftAdvertise      string
	TLSFrom                            string
	Insecure                           bool
	Out                                io.Writer
}

// runRecover checks everything first (a refusal changes nothing), builds
// the new data dir beside it under a temporary name and renames it into
// place when it is complete.
func runRecover(a recoverArgs) error {
	start := time.Now()
	if (a.FromSnapshot == "") == (a.FromDataDir == "") {
		return errors.New("give exactly one of --from-snapshot FILE|DIR and --from-data-dir DIR")
	}
	dir, err := filepath.Abs(a.DataDir)
	if err != nil {
		return err
	}
	if err := checkNewDataDir(dir); err != nil {
		return err
	}
	if a.Insecure && a.TLSFrom != "" {
		return errors.New("--insecure excludes --tls-from: a plaintext cluster has no TLS material")
	}

	tlsFrom := a.TLSFrom
	if tlsFrom == "" && !a.Insecure && a.FromDataDir != "" {
		tlsFrom = controller.TLSDir(a.FromDataDir)
	}
	if a.FromDataDir != "" {
		if st, err := os.Stat(filepath.Join(a.FromDataDir, "raft")); err != nil || !st.IsDir() {
			return fmt.Errorf("%s is not a controller's data dir (it has no raft directory)", a.FromDataDir)
		}
	}
	id := a.ID
	if id == "" && a.FromDataDir != "" {
		if tlsFrom != "" {
			id, _ = certIdentity(tlsFrom)
		}
		if id == "" {
			return errors.New("give --id: the controller id the recovered controller runs as")
		}
	}

	// The source.
	var (
		rec  *raftnode.Recovery
		from string
	)
	if a.FromSnapshot != "" {
		path := a.FromSnapshot
		if st, err := os.Stat(path); err != nil {
			return fmt.Errorf("--from-snapshot: %w", err)
		} else if st.IsDir() {
			var skipped []error
			if path, _, skipped, err = raftnode.NewestCopy(path); err != nil {
				return err
			}
			for _, e := range skipped {
				fmt.Fprintf(a.Out, "passed over a newer copy: %v\n", e)
			}
		}
		if rec, err = raftnode.OpenCopyRecovery(path); err != nil {
			return err
		}
		h := rec.Header()
		from = fmt.Sprintf("state copy %s (index %d, term %d, taken %s by %s)", path, h.Index, h.Term, h.TakenAt.Format(time.RFC3339), h.Controller)
	} else {
		if rec, err = raftnode.OpenDataDirRecovery(a.FromDataDir, 3*time.Second); err != nil {
			return err
		}
		from = fmt.Sprintf("data dir %s (up to index %d)", a.FromDataDir, rec.LastIndex())
	}
	defer rec.Close()

	// Who the recovered controller is, and where its raft listens.
	if id == "" {
		if id = rec.Header().Controller; id == "" {
			return errors.New("give --id: the controller id the recovered controller runs as")
		}
	}
	addr := cmp.Or(a.RaftAdvertise, a.RaftListen, rec.Address(id))
	if addr == "" {
		return fmt.Errorf("controller %s is not in the source's raft configuration (%s): give --raft-listen", id, serversOf(rec.Servers()))
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("raft address %q: %w", addr, err)
	}
	if ta, err := net.ResolveTCPAddr("tcp", addr); err == nil && (ta.IP == nil || ta.IP.IsUnspecified() || ta.Port == 0) {
		return fmt.Errorf("raft address %q cannot be dialed by peers: give --raft-advertise host:port", addr)
	}
	var tlsFiles map[string][]byte
	switch {
	case a.Insecure:
	case tlsFrom == "":
		return errors.New("give --tls-from DIR (the cluster CA and this controller's certificate: <old data-dir>/tls), or --insecure for a plaintext cluster")
	default:
		if tlsFiles, err = readTLS(tlsFrom, id); err != nil {
			return err
		}
	}

	// Build it beside the new data dir, then move it into place.
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".recover-")
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	lg := slog.Default()
	trail, err := audit.OpenFile(tmp, lg)
	if err != nil {
		return err
	}
	store := state.New()
	store.SetAuditSink(trail)
	index, term, err := rec.Into(tmp, id, addr, &raftnode.FSM{Store: store, Audit: trail})
	if cerr := trail.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close the audit trail: %w", cerr)
	}
	if err != nil {
		return err
	}
	if tlsFiles != nil {
		if err := pki.WriteFiles(controller.TLSDir(tmp), tlsFiles); err != nil {
			return err
		}
	}
	// dir is absent or empty (checked above); Go's rename does not replace
	// an empty directory, so it goes first.
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("move the recovered data dir into place: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("move the recovered data dir into place: %w", err)
	}
	done = true
	if d, err := os.Open(parent); err == nil {
		d.Sync()
		d.Close()
	}

	snap := store.View().Snapshot()
	fmt.Fprintf(a.Out, "recovered controller %s into %s in %s: a one-voter cluster (raft %s) at index %d, term %d, from %s\n",
		id, dir, time.Since(start).Round(time.Millisecond), addr, index, term, from)
	fmt.Fprintf(a.Out, "it holds %d centers, %d hosts, %d VMs, %d projects, %d users, %d restore points\n",
		len(snap.Centers), len(snap.Hosts), len(snap.Vms), len(snap.Projects), len(snap.Users), len(snap.RestorePoints))
	args := []string{"yunchid", "controller", "--id", id}
	api := "API_ADDRESS"
	if m, ok := store.Member(id); ok {
		if m.Center != "" {
			args = append(args, "--center", m.Center)
		}
		if m.ApiAddress != "" {
			api = m.ApiAddress
		}
	}
	args = append(args, "--data-dir", dir, "--listen", api, "--raft-listen", addr)
	if a.Insecure {
		args = append(args, "--insecure")
	}
	if rec.Header() != nil {
		// What the copy lacks, the cluster forgets: an agent removes a
		// domain no assignment names (agent/reconcile.go, removeOrphan).
		fmt.Fprintf(a.Out, "warning: what was made after this copy is lost: a VM created since and still running on a surviving host is an orphan to its agent, which removes its domain and disks once this controller runs (recover --from-data-dir, if the controller's data dir survived, holds more)\n")
	}
	fmt.Fprintf(a.Out, "start it: %s\n", strings.Join(args, " "))
	fmt.Fprintf(a.Out, "  (with --backup-dir and --image-dir of its old data dir if it kept a backup repository or images, and --raft-advertise if it listens on 0.0.0.0)\n")
	return nil
}

// checkNewDataDir refuses a data dir that holds raft state, or anything.
func checkNewDataDir(dir string) error {
	if raftnode.HasRaftState(dir) {
		return fmt.Errorf("%s already holds raft state (a controller's data dir): give a new directory to --data-dir", dir)
	}
	ents, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("--data-dir: %w", err)
	case len(ents) > 0:
		return fmt.Errorf("%s is not empty: give a new or empty directory to --data-dir", dir)
	}
	return nil
}

// readTLS reads the cluster CA and controller id's certificate and key
// from dir, checked to belong together.
func readTLS(dir, id string) (map[string][]byte, error) {
	got, err := certIdentity(dir)
	if err != nil {
		return nil, err
	}
	if got != id {
		return nil, fmt.Errorf("the certificate in %s is controller %s's, not %s's: give the tls directory of %s's old data dir, or --id %s", dir, got, id, id, got)
	}
	files := map[string][]byte{}
	for _, f := range []string{pki.CACertFile, pki.CAKeyFile, pki.ServerCertFile, pki.ServerKeyFile} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return nil, fmt.Errorf("--tls-from: %w", err)
		}
		files[f] = b
	}
	return files, nil
}

// certIdentity is the controller id the certificate in dir names, checked
// against the cluster CA there.
func certIdentity(dir string) (string, error) {
	ca, err := pki.LoadCA(dir)
	if err != nil {
		return "", fmt.Errorf("no cluster CA in %s: %w", dir, err)
	}
	kp, err := pki.LoadKeyPair(filepath.Join(dir, pki.ServerCertFile), filepath.Join(dir, pki.ServerKeyFile), ca.Cert)
	if err != nil {
		return "", fmt.Errorf("no controller certificate in %s: %w", dir, err)
	}
	ident, ok := pki.IdentityOf(kp.Leaf)
	if !ok || ident.Kind != pki.KindController {
		return "", fmt.Errorf("the certificate in %s is not a controller's", dir)
	}
	return ident.ID, nil
}

func serversOf(ss []raftnode.CopyServer) string {
	var out []string
	for _, s := range ss {
		out = append(out, s.ID+" at "+s.Address)
	}
	if len(out) == 0 {
		return "empty"
	}
	return strings.Join(out, ", ")
}
