package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// importChunk is the data of one import message; progressAbove is the file
// size from which an import prints its progress on stderr.
const (
	importChunk   = 1 << 20
	progressAbove = 8 << 20
)

func imageCommand() *cli.Command {
	imageProject := &cli.StringFlag{Name: "project", Aliases: []string{"p"}, Usage: "project of the image (controller default: \"default\")"}
	return &cli.Command{
		Name:  "image",
		Usage: "disk images VMs boot from (qcow2 or raw), per project or public",
		Subcommands: []*cli.Command{
			{
				Name:      "import",
				Usage:     "upload a disk image file",
				ArgsUsage: "NAME",
				UsageText: "yunchi image import NAME --file PATH [--project P | --public] [--format qcow2|raw] [--description TEXT]\n\n" +
					"The file's SHA-256 is computed here and checked by the controller. Without --format it is told\n" +
					"from the bytes (a qcow2 header, else raw). A qcow2 image may not name a backing file or be encrypted.\n" +
					"--public: usable from every project (infrastructure admins only). VMs use it with `yunchi vm create --image NAME`.",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "file", Usage: "the image file to upload"},
					imageProject,
					&cli.BoolFlag{Name: "public", Usage: "a public image, usable from every project (sysadmin only)"},
					&cli.StringFlag{Name: "format", Usage: "qcow2 or raw (default: told from the bytes)"},
					&cli.StringFlag{Name: "description", Usage: "one line saying what the image is"},
				},
				Action: withSession(imageImport),
			},
			{
				Name:    "list",
				Aliases: []string{"ls"},
				Usage:   "list images: a project's and the public ones",
				Flags:   []cli.Flag{&cli.StringFlag{Name: "project", Aliases: []string{"p"}, Usage: "this project's images and the public ones (default: all you can see)"}, consistentFlag()},
				Action:  withSession(imageList),
			},
			{
				Name:      "show",
				Aliases:   []string{"get"},
				Usage:     "show one image (the project's of that name, else the public one)",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{imageProject, consistentFlag()},
				Action:    withSession(imageShow),
			},
			{
				Name:      "delete",
				Aliases:   []string{"rm"},
				Usage:     "delete an image (refused while a VM uses it)",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{imageProject, &cli.BoolFlag{Name: "public", Usage: "delete the public image of that name (sysadmin only)"}},
				Action:    withSession(imageDelete),
			},
		},
	}
}

func parseFormat(s string) (yunchiv1.ImageFormat, error) {
	switch strings.ToLower(s) {
	case "":
		return yunchiv1.ImageFormat_IMAGE_FORMAT_UNSPECIFIED, nil
	case "qcow2":
		return yunchiv1.ImageFormat_IMAGE_FORMAT_QCOW2, nil
	case "raw":
		return yunchiv1.ImageFormat_IMAGE_FORMAT_RAW, nil
	}
	return 0, usagef("image import: --format %q is not valid: use qcow2 or raw", s)
}

// fileSHA256 hashes the file at path, returning its hash and size.
func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func imageImport(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	path := cCtx.String("file")
	if path == "" {
		return usagef("image import: --file is required: the image file to upload")
	}
	if cCtx.Bool("public") && cCtx.String("project") != "" {
		return usagef("image import: --public and --project exclude each other: a public image belongs to no project")
	}
	format, err := parseFormat(cCtx.String("format"))
	if err != nil {
		return err
	}
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		return usagef("image import: %v", unwrapPathError(err))
	case !fi.Mode().IsRegular():
		return usagef("image import: %s is not a regular file", path)
	case fi.Size() == 0:
		return usagef("image import: %s is empty", path)
	}
	// Hashed first, sent second: the controller checks that what came is
	// what was read here.
	sum, size, err := fileSHA256(path)
	if err != nil {
		return fmt.Errorf("image import: read %s: %v", path, unwrapPathError(err))
	}
	hdr := &yunchiv1.ImageHeader{Name: args[0], Project: cCtx.String("project"), Public: cCtx.Bool("public"),
		Format: format, SizeBytes: size, Sha256: sum, Description: cCtx.String("description")}
	var img *yunchiv1.Image
	// One pass over the controllers, no per-call timeout (a large file
	// takes its time); resent elsewhere only if nothing was recorded.
	err = s.client.call(s.ctx, retryNever, false, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		var err error
		img, err = sendImage(ctx, cc, path, hdr, s.stderr)
		return err
	})
	if err != nil {
		return err
	}
	return s.out.print(img, s.out.imageDetail(img))
}

// sendImage streams the file at path as an import under hdr, printing
// progress on progress for a large file.
func sendImage(ctx context.Context, cc grpc.ClientConnInterface, path string, hdr *yunchiv1.ImageHeader, progress io.Writer) (*yunchiv1.Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := yunchiv1.NewImageServiceClient(cc).ImportImage(ctx)
	if err != nil {
		return nil, err
	}
	if err := st.Send(&yunchiv1.ImportImageRequest{Header: hdr}); err != nil {
		return st.CloseAndRecv() // the controller's answer says why
	}
	show := hdr.SizeBytes > progressAbove
	var sent int64
	last := time.Now()
	buf := make([]byte, importChunk)
	for {
		n, rerr := io.ReadFull(f, buf)
		if n > 0 {
			if err := st.Send(&yunchiv1.ImportImageRequest{Data: buf[:n]}); err != nil {
				return st.CloseAndRecv() // refused midway: its reason
			}
			sent += int64(n)
			if show && (time.Since(last) >= time.Second || sent == hdr.SizeBytes) {
				last = time.Now()
				fmt.Fprintf(progress, "yunchi: image %s: %s of %s sent (%d%%)\n", hdr.Name,
					scheduler.FormatBytes(sent), scheduler.FormatBytes(hdr.SizeBytes), sent*100/hdr.SizeBytes)
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return nil, fmt.Errorf("read %s: %v", path, rerr)
		}
	}
	if sent != hdr.SizeBytes {
		return nil, fmt.Errorf("%s changed while it was sent (%d bytes read, %d hashed): import it again", path, sent, hdr.SizeBytes)
	}
	return st.CloseAndRecv()
}

// unwrapPathError drops the "open PATH:" prefix duplication of *PathError
// where the message already names the file.
func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %v", pe.Path, pe.Err)
	}
	return err
}

func imageList(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	all := &yunchiv1.ListImagesResponse{}
	err := allPages(s, func(ctx context.Context, cc grpc.ClientConnInterface, token string) (*yunchiv1.ListImagesResponse, error) {
		return yunchiv1.NewImageServiceClient(cc).ListImages(ctx, &yunchiv1.ListImagesRequest{
			Project: cCtx.String("project"), Consistent: cCtx.Bool("consistent"), PageSize: listPage, PageToken: token,
		})
	}, func(r *yunchiv1.ListImagesResponse) { all.Images = append(all.Images, r.GetImages()...) })
	if err != nil {
		return err
	}
	return s.out.print(all, s.out.imageList(all.GetImages()))
}

func imageShow(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	req := &yunchiv1.GetImageRequest{Name: args[0], Project: cCtx.String("project"), Consistent: cCtx.Bool("consistent")}
	img, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Image, error) {
		return yunchiv1.NewImageServiceClient(cc).GetImage(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(img, s.out.imageDetail(img))
}

func imageDelete(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	if cCtx.Bool("public") && cCtx.String("project") != "" {
		return usagef("image delete: --public and --project exclude each other: a public image belongs to no project")
	}
	req := &yunchiv1.DeleteImageRequest{Name: args[0], Project: cCtx.String("project"), Public: cCtx.Bool("public")}
	// retryKeyed: a resend after a delete that went through gets its first answer, not "not found".
	img, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Image, error) {
		return yunchiv1.NewImageServiceClient(cc).DeleteImage(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(img, func(w io.Writer) { fmt.Fprintf(w, "image %s deleted\n", req.Name) })
}

func imageFormat(f yunchiv1.ImageFormat) string { return enumWord(f.String(), "IMAGE_FORMAT_") }

// imageOwner is "public" or the image's project.
func imageOwner(img *yunchiv1.Image) string {
	if img.GetPublic() {
		return "(public)"
	}
	return img.GetProject()
}

func (p *printer) imageList(imgs []*yunchiv1.Image) func(io.Writer) {
	return func(w io.Writer) {
		fmt.Fprintln(w, "NAME\tPROJECT\tFORMAT\tSIZE\tVIRTUAL SIZE\tVMS\tSHA256\tAGE")
		for _, img := range imgs {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", img.GetName(), imageOwner(img), imageFormat(img.GetFormat()),
				scheduler.FormatBytes(img.GetSizeBytes()), scheduler.FormatBytes(img.GetVirtualSizeBytes()), img.GetVmCount(),
				shortSHA(img.GetSha256()), p.age(img.GetCreatedAt()))
		}
	}
}

func shortSHA(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return dash(s)
}

func (p *printer) imageDetail(img *yunchiv1.Image) func(io.Writer) {
	return func(w io.Writer) {
		kv(w, "Name", img.GetName())
		kv(w, "Project", imageOwner(img))
		kv(w, "Format", imageFormat(img.GetFormat()))
		kv(w, "Size", scheduler.FormatBytes(img.GetSizeBytes())+" ("+strconv.FormatInt(img.GetSizeBytes(), 10)+" bytes)")
		kv(w, "Virtual size", scheduler.FormatBytes(img.GetVirtualSizeBytes()))
		kv(w, "SHA256", img.GetSha256())
		kv(w, "Description", img.GetDescription())
		kv(w, "VMs", strconv.Itoa(int(img.GetVmCount())))
		kv(w, "Created", p.timestamp(img.GetCreatedAt()))
		kv(w, "Revision", strconv.FormatUint(img.GetRevision(), 10))
	}
}

// readSmallFile reads path, refusing one over limit bytes.
func readSmallFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, unwrapPathError(err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, unwrapPathError(err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %s", path, scheduler.FormatBytes(limit))
	}
	return b, nil
}

// looksLikeKey says whether s is a public key itself rather than a file
// name: an authorized_keys line has a key type and a blob.
func looksLikeKey(s string) bool {
	for _, f := range strings.Fields(s) {
		if strings.HasPrefix(f, "ssh-") || strings.HasPrefix(f, "ecdsa-sha2-") || strings.HasPrefix(f, "sk-") {
			return len(strings.Fields(s)) > 1
		}
	}
	return false
}

// sshKeys reads --ssh-key values: each a key, or a file of keys (one per
// line, as authorized_keys: blank lines and # comments skipped).
func sshKeys(vals []string) ([]string, error) {
	var out []string
	for _, v := range vals {
		if looksLikeKey(v) {
			out = append(out, strings.TrimSpace(v))
			continue
		}
		b, err := readSmallFile(v, 1<<20)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a public key (\"ssh-ed25519 AAAA... user@host\") nor a readable file: %v", v, err)
		}
		n := 0
		for _, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			out = append(out, line)
			n++
		}
		if n == 0 {
			return nil, fmt.Errorf("%s holds no public key", v)
		}
	}
	return out, nil
}
