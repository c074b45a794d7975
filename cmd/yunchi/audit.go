package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	"github.com/yunchi/yunchi/controller/api"
	"github.com/yunchi/yunchi/controller/audit"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// auditBrokenError is a verification that found the trail altered,
// incomplete or out of order (exit code exitAuditBroken).
type auditBrokenError struct{ msg string }

func (e *auditBrokenError) Error() string { return e.msg }

func auditCommand() *cli.Command {
	since := &cli.StringFlag{Name: "since", Usage: "records from this time on: a duration back from now (1h, 30m, 7d) or RFC3339"}
	until := &cli.StringFlag{Name: "until", Usage: "records before this time: a duration back from now or RFC3339"}
	return &cli.Command{
		Name:  "audit",
		Usage: "read, verify, export and archive the audit trail (auditors only)",
		Subcommands: []*cli.Command{
			{
				Name:      "list",
				Usage:     "list audit records, oldest first",
				UsageText: "yunchi audit list [--since 1h|RFC3339] [--until ...] [--user U] [--action A] [--dept D] [--limit N]",
				Flags: []cli.Flag{since, until,
					&cli.StringFlag{Name: "user", Usage: "only this actor (user name, host id or \"system\")"},
					&cli.StringFlag{Name: "action", Usage: "only this action (method name, e.g. CreateVM)"},
					&cli.StringFlag{Name: "dept", Usage: "only this department"},
					&cli.IntFlag{Name: "limit", Usage: "at most this many records (0: all)", Value: 1000},
				},
				Action: withSession(auditList),
			},
			{
				Name:  "verify",
				Usage: "check the hash chain: names every altered, missing, reordered or truncated record",
				UsageText: "yunchi audit verify                 (a controller checks its own trail)\n" +
					"   yunchi audit verify --data-dir DIR  (a stopped controller's data dir, or a copy; no network)\n" +
					"   yunchi audit verify --file FILE     (an export or archive on its own)",
				Description: "Exits 0 when the trail is whole, 11 when it is not (one line per problem: kind and seq).",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "data-dir", Usage: "verify a stopped controller's data dir offline"},
					&cli.StringFlag{Name: "file", Usage: "verify an exported or archived file offline"},
				},
				Action: auditVerify,
			},
			{
				Name:      "export",
				Usage:     "write audit records as JSON lines (the trail's own format) for the log archive",
				UsageText: "yunchi audit export --since 24h|RFC3339 [--until ...] [--out FILE]",
				Flags:     []cli.Flag{since, until, &cli.StringFlag{Name: "out", Usage: "write to FILE (default stdout); progress goes to stderr"}},
				Action:    withSession(auditExport),
			},
			{
				Name:      "archive",
				Usage:     "write records older than a date to a file, then drop them from the trail (a checkpoint record stands for them)",
				UsageText: "yunchi audit archive --before DATE --out FILE",
				Description: "The Cybersecurity Law asks for at least 180 days of logs: --before must be at least 180 days ago\n" +
					"unless --force is given. Nothing is dropped unless the file was written completely.",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "before", Usage: "archive records before this date (RFC3339 or YYYY-MM-DD, UTC)"},
					&cli.StringFlag{Name: "out", Usage: "archive file to write (must not exist)"},
					&cli.BoolFlag{Name: "force", Usage: "archive records younger than 180 days"},
				},
				Action: withSession(auditArchive),
			},
		},
	}
}

// parseSince reads a time flag: a duration back from now ("1h", "7d") or
// an RFC3339 time or a date. Empty: 0.
func parseSince(flag, v string, now time.Time) (int64, error) {
	if v == "" {
		return 0, nil
	}
	if strings.HasSuffix(v, "d") {
		if n, err := strconv.Atoi(strings.TrimSuffix(v, "d")); err == nil && n >= 0 {
			return now.Add(-time.Duration(n) * 24 * time.Hour).UnixNano(), nil
		}
	}
	if d, err := time.ParseDuration(v); err == nil {
		if d < 0 {
			return 0, usagef("--%s %q: give a positive duration back from now", flag, v)
		}
		return now.Add(-d).UnixNano(), nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t.UnixNano(), nil
	}
	if t, err := time.Parse("2006-01-02", v); err == nil {
		return t.UnixNano(), nil
	}
	return 0, usagef("--%s %q: give a duration back from now (1h, 30m, 7d), an RFC3339 time or a date YYYY-MM-DD", flag, v)
}

func timeRange(cCtx *cli.Context) (int64, int64, error) {
	now := time.Now()
	since, err := parseSince("since", cCtx.String("since"), now)
	if err != nil {
		return 0, 0, err
	}
	until, err := parseSince("until", cCtx.String("until"), now)
	if err != nil {
		return 0, 0, err
	}
	if until != 0 && until < since {
		return 0, 0, usagef("--until is before --since: swap them")
	}
	return since, until, nil
}

func auditList(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	since, until, err := timeRange(cCtx)
	if err != nil {
		return err
	}
	limit := cCtx.Int("limit")
	if limit < 0 {
		return usagef("--limit %d: give 0 (all) or more", limit)
	}
	all := &yunchiv1.ListAuditResponse{}
	token := ""
	for page := 0; ; page++ {
		req := &yunchiv1.ListAuditRequest{SinceUnixNano: since, UntilUnixNano: until, User: cCtx.String("user"),
			Action: cCtx.String("action"), Department: cCtx.String("dept"), PageSize: 1000, PageToken: token}
		resp, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ListAuditResponse, error) {
			return yunchiv1.NewAuditServiceClient(cc).ListAudit(ctx, req)
		})
		if err != nil {
			return err
		}
		all.Records = append(all.Records, resp.Records...)
		if limit > 0 && len(all.Records) >= limit {
			all.Records = all.Records[:limit]
			break
		}
		if resp.NextPageToken == "" {
			break
		}
		token = resp.NextPageToken
		if page > 0 && page%10 == 0 {
			fmt.Fprintf(s.stderr, "yunchi: %d records so far...\n", len(all.Records))
		}
	}
	return s.out.print(all, func(w io.Writer) {
		fmt.Fprintln(w, "SEQ\tTIME\tKIND\tACTOR\tROLE\tDEPT\tSOURCE\tACTION\tTARGET\tRESULT")
		for _, r := range all.Records {
			res := r.Result
			if r.Code != "" {
				res += " (" + r.Code + ")"
			}
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, time.Unix(0, r.UnixNano).UTC().Format(time.RFC3339),
				r.Kind, dash(r.Actor), dash(strings.TrimPrefix(r.Role, "ROLE_")), dash(r.Department), dash(r.Source), dash(r.Action), dash(r.Target), dash(res))
		}
	})
}

func auditVerify(cCtx *cli.Context) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	dir, file := cCtx.String("data-dir"), cCtx.String("file")
	if dir != "" && file != "" {
		return usagef("give --data-dir or --file, not both")
	}
	if dir == "" && file == "" {
		return withSession(auditVerifyOnline)(cCtx)
	}
	out, err := newPrinter(cCtx.App.Writer, cCtx.String("output"))
	if err != nil {
		return err
	}
	var rep *audit.Report
	name := file
	if dir != "" {
		rep, err = audit.VerifyDataDir(dir)
		name = dir
	} else {
		rep, err = audit.VerifyFile(file)
	}
	if err != nil {
		return fmt.Errorf("verify %s: %w", name, err)
	}
	return printVerify(out, api.VerifyToAPI(rep, name))
}

func auditVerifyOnline(cCtx *cli.Context, s *session) error {
	resp, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.VerifyAuditResponse, error) {
		return yunchiv1.NewAuditServiceClient(cc).VerifyAudit(ctx, &yunchiv1.VerifyAuditRequest{})
	})
	if err != nil {
		return err
	}
	return printVerify(s.out, resp)
}

func printVerify(out *printer, r *yunchiv1.VerifyAuditResponse) error {
	err := out.print(r, func(w io.Writer) {
		if r.Ok {
			fmt.Fprintf(w, "ok: %d records, seq %d..%d, head %d (%s)\n", r.Records, r.FirstSeq, r.LastSeq, r.HeadSeq, r.Controller)
			return
		}
		for _, p := range r.Problems {
			fmt.Fprintf(w, "%s\tseq %d\t%s\n", p.Kind, p.Seq, p.Detail)
		}
	})
	if err != nil {
		return err
	}
	if !r.Ok {
		kinds := make([]string, 0, len(r.Problems))
		for _, p := range r.Problems {
			kinds = append(kinds, fmt.Sprintf("%s at seq %d", p.Kind, p.Seq))
		}
		return &auditBrokenError{msg: "the audit trail of " + r.Controller + " is broken: " + strings.Join(kinds, ", ")}
	}
	return nil
}

// exportTo streams the records in [since, until) to w as JSON lines,
// reporting progress on stderr; it returns the last record written, how
// many and the first's time.
func exportTo(s *session, since, until int64, w io.Writer) (last *yunchiv1.AuditRecord, n uint64, first int64, err error) {
	bw := bufio.NewWriter(w)
	err = s.client.call(s.ctx, retrySafe, false, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		if n > 0 {
			// Lines already written cannot be taken back: no retry.
			return fmt.Errorf("the export was cut off after %d records (seq %d): run it again", n, last.Seq)
		}
		st, err := yunchiv1.NewAuditServiceClient(cc).ExportAudit(ctx, &yunchiv1.ExportAuditRequest{SinceUnixNano: since, UntilUnixNano: until})
		if err != nil {
			return err
		}
		for {
			r, err := st.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if n == 0 {
				first = r.UnixNano
			}
			if _, err := bw.Write(api.AuditLineOf(r).Marshal()); err != nil {
				return err
			}
			last = r
			n++
			if n%10000 == 0 {
				fmt.Fprintf(s.stderr, "yunchi: exported %d records (seq %d)...\n", n, r.Seq)
			}
		}
	})
	if err == nil {
		err = bw.Flush()
	}
	return last, n, first, err
}

func auditExport(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	if cCtx.String("since") == "" {
		return usagef("--since is required (e.g. --since 24h, or --since 2026-01-01 for everything since then)")
	}
	since, until, err := timeRange(cCtx)
	if err != nil {
		return err
	}
	var w io.Writer = cCtx.App.Writer
	path := cCtx.String("out")
	var f *os.File
	if path != "" {
		if f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
		w = f
	}
	_, n, _, err := exportTo(s, since, until, w)
	if f != nil {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
		}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(s.stderr, "yunchi: exported %d records\n", n)
	return nil
}

// RetentionDays is the least age of records archive drops without --force.
const RetentionDays = 180

func auditArchive(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	path := cCtx.String("out")
	if cCtx.String("before") == "" || path == "" {
		return usagef("--before and --out are required: yunchi audit archive --before 2026-01-01 --out audit-2025.jsonl")
	}
	before, err := parseSince("before", cCtx.String("before"), time.Now())
	if err != nil {
		return err
	}
	if limit := time.Now().Add(-RetentionDays * 24 * time.Hour); before > limit.UnixNano() && !cCtx.Bool("force") {
		return usagef("--before %s is less than %d days ago (the least retention): give an earlier date, or --force", cCtx.String("before"), RetentionDays)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	h := sha256.New()
	last, n, first, err := exportTo(s, 0, before, io.MultiWriter(f, h))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return err
	}
	if n == 0 {
		os.Remove(path)
		return fmt.Errorf("no records before %s: nothing to archive", cCtx.String("before"))
	}
	fmt.Fprintf(s.stderr, "yunchi: wrote %d records (seq through %d) to %s; dropping them from the trail\n", n, last.Seq, path)
	resp, err := do(s.ctx, s.client, retryNever, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ArchiveAuditResponse, error) {
		return yunchiv1.NewAuditServiceClient(cc).ArchiveAudit(ctx, &yunchiv1.ArchiveAuditRequest{
			ThroughSeq: last.Seq, ThroughHash: last.Hash, ArchiveSha256: hex.EncodeToString(h.Sum(nil)),
			Count: n, FirstUnixNano: first, LastUnixNano: last.UnixNano})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) {
		fmt.Fprintf(w, "archived records through %d to %s (sha256 %s); checkpoint is record %d\n", last.Seq, path, hex.EncodeToString(h.Sum(nil)), resp.GetCheckpoint().GetSeq())
	})
}
